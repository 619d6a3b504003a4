"""Each example's domain, for the domain mixtures (DDK, fixed mixing): read from a column of
the data (``domain_field``, e.g. Dolly's ``category``) or given by the data's sources (``mix``:
several sources, each one domain).

A mix entry names its domain and its source, and may set the source's own ``fields``,
``template``, ``split``, ``id_field`` and ``limit`` (unset: the run's data settings). Its ids
become ``<domain>/<id>`` (unique across the mix) and ``meta["domain"]`` its domain. A part of a
single file is chosen with a Hugging Face slice of its ``split`` (``datasets`` honours these on
local files): MBPP's training tasks 601-974 are ``split: "train[600:]"`` of ``mbpp.jsonl``
(974 rows in task-id order), ``split: "train[:100]"`` the first 100 rows of any file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spectrumkd.data.loading import OPTION, Example, FieldMap, OptionError, load_examples

# The meta column a mix writes each example's domain to.
MIX_DOMAIN_FIELD = "domain"
_SCALARS = (str, int, float, bool)


def field_map(value: Any, where: str) -> str | FieldMap | None:
    """``fields`` as given: a preset name, a :class:`FieldMap`, None (detect), or a mapping of
    roles to columns (``{instruction: question, response: answer}``) made a FieldMap."""
    if value is None or isinstance(value, (str, FieldMap)):
        return value
    roles = [f.name for f in dataclasses.fields(FieldMap)]
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{where} takes a preset name or a mapping of roles ({', '.join(roles)}) to columns, "
            f"not {value!r}"
        )
    unknown = sorted(str(k) for k in set(value) - set(roles))
    if unknown:
        raise ValueError(
            f"{where}: unknown role(s) {', '.join(unknown)}; roles are {', '.join(roles)}"
        )
    if not value.get("response"):
        raise ValueError(f"{where} needs a 'response' column, e.g. response: answer")
    bad = [f"{k}={v!r}" for k, v in value.items() if v is not None and not isinstance(v, str)]
    if bad:
        raise ValueError(f"{where}: a role names a column by its name, not {', '.join(bad)}")
    return FieldMap(**{role: value.get(role) for role in roles})


@dataclass(frozen=True)
class DomainSource:
    """One source of a mix, all of whose examples are the domain ``domain``; the settings left
    None are the run's (``DataConfig``'s) own."""

    domain: str
    source: str
    fields: str | FieldMap | None = None
    template: str | None = None
    split: str | None = None
    id_field: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.domain, str) or not self.domain.strip():
            raise ValueError(
                f"data.mix: domain {self.domain!r} must be a non-empty name, e.g. domain: maths"
            )
        if "/" in self.domain:
            raise ValueError(
                f"data.mix: domain {self.domain!r} holds '/', which separates a domain from an "
                "id in the mix's ids; name it without '/'"
            )
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(
                f"data.mix: domain {self.domain!r} needs a source (a data file, folder, hub "
                "name or embedded:dolly)"
            )
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            raise ValueError(f"data.mix: domain {self.domain!r}: limit={self.limit} must be >= 1")
        object.__setattr__(
            self, "fields", field_map(self.fields, f"data.mix domain {self.domain!r} fields")
        )


def domain_sources(value: Any) -> list[DomainSource]:
    """``data.mix`` as given (a list of mappings or :class:`DomainSource`), checked: at least
    one entry, known keys, each domain named once."""
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ValueError(
            "data.mix must list one or more sources, each a domain, e.g. mix: [{domain: maths, "
            "source: gsm8k/train.jsonl}]"
        )
    known = [f.name for f in dataclasses.fields(DomainSource)]
    entries: list[DomainSource] = []
    for index, entry in enumerate(value):
        if isinstance(entry, DomainSource):
            entries.append(entry)
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(
                f"data.mix[{index}] must be a mapping with domain and source, not {entry!r}"
            )
        unknown = sorted(str(k) for k in set(entry) - set(known))
        if unknown:
            raise ValueError(
                f"data.mix[{index}]: unknown setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(known)}"
            )
        missing = [k for k in ("domain", "source") if k not in entry]
        if missing:
            raise ValueError(f"data.mix[{index}] needs {' and '.join(missing)}")
        entries.append(DomainSource(**entry))
    seen: set[str] = set()
    for entry in entries:
        if entry.domain in seen:
            raise ValueError(
                f"data.mix names the domain {entry.domain!r} twice; give each source its own "
                "domain name"
            )
        seen.add(entry.domain)
    return entries


def load_mix(
    mix: Sequence[DomainSource],
    *,
    fields: str | FieldMap | None,
    template: str,
    split: str,
    id_field: str | None,
    limit: int | None,
    tokenizer: Any = None,
) -> list[Example]:
    """Every source's examples, in the mix's order: ids ``<domain>/<id>``, ``meta["domain"]``
    its domain. The keyword settings are the defaults of the entries that leave them unset."""
    examples: list[Example] = []
    for index, entry in enumerate(mix):
        try:
            loaded = load_examples(
                entry.source,
                fields=entry.fields if entry.fields is not None else fields,
                template=entry.template if entry.template is not None else template,
                tokenizer=tokenizer,
                split=entry.split if entry.split is not None else split,
                id_field=entry.id_field if entry.id_field is not None else id_field,
                limit=entry.limit if entry.limit is not None else limit,
            )
        except OptionError as error:  # the option is this entry's, not the run's
            raise OptionError(
                f"domain {entry.domain!r}: {error.template}", f"mix[{index}].{error.option}"
            ) from error
        except ValueError as error:
            raise ValueError(f"data.mix domain {entry.domain!r}: {error}") from error
        for example in loaded:
            meta = {**example.meta, MIX_DOMAIN_FIELD: entry.domain}
            examples.append(
                dataclasses.replace(example, id=f"{entry.domain}/{example.id}", meta=meta)
            )
    return examples


def example_domains(examples: Sequence[Example], field: str, where: str = "data") -> dict[str, str]:
    """``{id: domain}`` from the meta column ``field`` of every example; a row without a
    usable value (no such column, empty, not a scalar) is a one-line :class:`OptionError`
    naming the row and the option."""
    domains: dict[str, str] = {}
    for index, example in enumerate(examples):
        value = example.meta.get(field)
        if field not in example.meta:
            present = sorted(example.meta)
            raise OptionError(
                f"{where}: row {index} (id {example.id!r}) has no column {field!r} of scalar "
                f"values (named by {OPTION}); its other columns are {present}; name the column "
                "that holds each example's domain",
                "domain_field",
            )
        if value is None or not isinstance(value, _SCALARS) or not str(value).strip():
            raise OptionError(
                f"{where}: row {index} (id {example.id!r}) has an empty domain in column "
                f"{field!r} (named by {OPTION}); give every row a domain or drop the row",
                "domain_field",
            )
        domains[example.id] = str(value)
    return domains
