"""Data stage: load prompt/response pairs, render them with the paper's templates, tokenise."""

from spectrumkd.data.config import DataConfig
from spectrumkd.data.domains import (
    MIX_DOMAIN_FIELD,
    DomainSource,
    domain_sources,
    example_domains,
    field_map,
    load_mix,
)
from spectrumkd.data.loading import (
    EMBEDDED_SOURCES,
    PRESETS,
    SUPPORTED_SUFFIXES,
    Example,
    FieldMap,
    OptionError,
    embedded_dolly_path,
    load_examples,
    refuse_empty_file,
)
from spectrumkd.data.split import split_validation
from spectrumkd.data.templates import (
    TEMPLATES,
    render_chat,
    render_code,
    render_instruction,
    render_math,
)
from spectrumkd.data.tokenize import (
    IGNORE_INDEX,
    DataCollator,
    TokenizedDataset,
    TokenizedExample,
    TokenizedTorchDataset,
    collate,
    tokenize_examples,
)

__all__ = [
    "DataConfig",
    "DomainSource",
    "MIX_DOMAIN_FIELD",
    "EMBEDDED_SOURCES",
    "IGNORE_INDEX",
    "PRESETS",
    "SUPPORTED_SUFFIXES",
    "TEMPLATES",
    "DataCollator",
    "Example",
    "FieldMap",
    "OptionError",
    "TokenizedDataset",
    "TokenizedExample",
    "TokenizedTorchDataset",
    "collate",
    "domain_sources",
    "example_domains",
    "field_map",
    "load_mix",
    "embedded_dolly_path",
    "load_examples",
    "refuse_empty_file",
    "render_chat",
    "render_code",
    "render_instruction",
    "render_math",
    "split_validation",
    "tokenize_examples",
]
