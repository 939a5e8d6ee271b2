"""Arrow types -> Hugging Face `datasets` feature declarations, without importing `datasets`.

Two spellings of the same declaration: the JSON form that `datasets` stores in a Parquet file's
schema metadata (key ``huggingface``, read by ``Features.from_arrow_schema``: it is what makes
an Image column decode), and the YAML list of a dataset card's ``dataset_info.features``. Only
the types the job writes are covered (output/columns.py): integers, floats, strings, bools,
nulls, binary, lists, structs, and Image columns (named in ``images``).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

# Arrow's names where `datasets` spells the dtype differently.
_DTYPE_NAMES = {"bool": "bool", "halffloat": "float16", "float": "float32", "double": "float64"}


def dtype_name(t: pa.DataType) -> str:
    if not (pa.types.is_primitive(t) or pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_null(t)):
        raise TypeError(f"{t} is not a plain value type")
    return _DTYPE_NAMES.get(str(t), str(t))


def feature_dict(t: pa.DataType) -> Any:
    """One column's feature in `datasets`' JSON form (``Features.to_dict``)."""
    if pa.types.is_struct(t):
        return {f.name: feature_dict(f.type) for f in t}
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        entry = {"feature": feature_dict(t.value_type), "_type": "List"}
        if pa.types.is_fixed_size_list(t):
            entry = {"feature": entry["feature"], "length": t.list_size, "_type": "List"}
        return entry
    return {"dtype": dtype_name(t), "_type": "Value"}


def features_dict(schema: pa.Schema, images: tuple[str, ...] = ()) -> dict[str, Any]:
    return {f.name: {"_type": "Image"} if f.name in images else feature_dict(f.type) for f in schema}


def with_features_metadata(schema: pa.Schema, images: tuple[str, ...] = ()) -> pa.Schema:
    """The schema with the ``huggingface`` metadata `datasets` reads back as these features."""
    info = {"info": {"features": features_dict(schema, images)}}
    return schema.with_metadata({**(schema.metadata or {}), b"huggingface": json.dumps(info).encode()})


def feature_yaml(t: pa.DataType) -> dict[str, Any]:
    """One column's feature as a dataset card declares it (``Features._to_yaml_list`` form,
    without the ``name``): ``dtype: int64``, ``list: string``, ``struct: [...]``, ..."""
    if pa.types.is_struct(t):
        return {"struct": [{"name": f.name, **feature_yaml(f.type)} for f in t]}
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        item = feature_yaml(t.value_type)
        # a list of a plain value or of a struct is written in short: `list: int64`, `list: [fields]`
        short = (
            item.get("dtype", item.get("struct")) if len(item) == 1 and ("dtype" in item or "struct" in item) else None
        )
        entry: dict[str, Any] = {"list": short if short is not None else item}
        if pa.types.is_fixed_size_list(t):
            entry["length"] = t.list_size
        return entry
    return {"dtype": dtype_name(t)}


def features_yaml(schema: pa.Schema, images: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    return [{"name": f.name, **({"dtype": "image"} if f.name in images else feature_yaml(f.type))} for f in schema]
