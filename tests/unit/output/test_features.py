"""output/features.py declares what `datasets` itself makes of the same Arrow schema."""

from __future__ import annotations

import json

import datasets  # a test extra: the real consumer library
import pyarrow as pa
import pytest

from turbobatch.output.columns import IMAGE_TYPE, data_schema, metadata_schema
from turbobatch.output.features import features_dict, features_yaml, with_features_metadata

KEPT = pa.schema(
    [
        ("i8", pa.int8()),
        ("u64", pa.uint64()),
        ("f32", pa.float32()),
        ("f64", pa.float64()),
        ("b", pa.bool_()),
        ("s", pa.string()),
        ("n", pa.null()),
        ("ints", pa.list_(pa.int64())),
        ("fixed", pa.list_(pa.int32(), 3)),
        ("nested", pa.list_(pa.list_(pa.string()))),
        ("rows", pa.list_(pa.struct([("a", pa.int64()), ("b", pa.string())]))),
        ("box", pa.struct([("x", pa.float64()), ("tags", pa.list_(pa.string())), ("n", pa.null())])),
    ]
)


@pytest.mark.parametrize("schema", [metadata_schema(KEPT), metadata_schema(pa.schema([]))])
def test_declarations_equal_what_datasets_infers(schema):
    inferred = datasets.Features.from_arrow_schema(schema)
    assert datasets.Features._from_yaml_list(features_yaml(schema)) == inferred
    assert features_yaml(schema) == inferred._to_yaml_list()
    assert datasets.Features.from_dict(features_dict(schema)) == inferred


def test_image_columns_decode_as_images():
    schema = with_features_metadata(data_schema(KEPT), images=("image",))
    features = datasets.Features.from_arrow_schema(schema)  # what load_dataset("parquet") reads from a file
    assert isinstance(features["image"], datasets.Image)
    assert features.arrow_schema.field("image").type == IMAGE_TYPE
    assert datasets.Features._from_yaml_list(features_yaml(schema, images=("image",))) == features
    assert json.loads(schema.metadata[b"huggingface"])["info"]["features"]["image"] == {"_type": "Image"}
