"""Science-T2I datasets in every supported on-disk format read back as the same records."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from science_t2i.nodes.errors import ScienceT2IError
from science_t2i.training.core.datasets import ImageRef, load_records, write_jsonl_dataset

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 20)]


def _img(colour, size=(6, 5)):
    return Image.new("RGB", size, colour)


def _rows():
    """Two records in the released schema: prompts as lists, images as lists."""
    return [
        {"implicit_prompt": ["an unripe tomato", "a tomato before ripening"],
         "explicit_prompt": ["a green tomato"], "superficial_prompt": ["a red tomato"],
         "explicit_image": [_img(COLOURS[1])], "superficial_image": [_img(COLOURS[0])],
         "category": "biology", "law": "RI"},
        {"implicit_prompt": ["a laptop without electricity"],
         "explicit_prompt": ["a laptop with a black screen"],
         "superficial_prompt": ["a laptop with a bright screen"],
         "explicit_image": [_img(COLOURS[2]), _img(COLOURS[3])],
         "superficial_image": [_img(COLOURS[3])],
         "category": "physics", "law": "EL"},
    ]


def _check(records):
    assert len(records) == 2
    a, b = records
    assert a.implicit_prompts == ["an unripe tomato", "a tomato before ripening"]
    assert a.explicit_prompts == ["a green tomato"] and a.superficial_prompts == ["a red tomato"]
    assert (a.category, a.task, a.index) == ("biology", "RI", 0)
    assert (b.category, b.task, b.index) == ("physics", "EL", 1)
    assert len(b.explicit_images) == 2 and len(b.superficial_images) == 1
    for ref, colour in [(a.explicit_images[0], COLOURS[1]), (a.superficial_images[0], COLOURS[0]),
                        (b.explicit_images[0], COLOURS[2]), (b.explicit_images[1], COLOURS[3])]:
        im = ref.open()
        assert im.mode == "RGB" and im.size == (6, 5)
        assert tuple(np.asarray(im)[2, 3]) == colour


def _hf_dataset(rows):
    import datasets
    feats = datasets.Features({
        "implicit_prompt": datasets.List(datasets.Value("string")),
        "explicit_prompt": datasets.List(datasets.Value("string")),
        "superficial_prompt": datasets.List(datasets.Value("string")),
        "explicit_image": datasets.List(datasets.Image()),
        "superficial_image": datasets.List(datasets.Image()),
        "category": datasets.Value("string"), "law": datasets.Value("string")})
    cols = {k: [r[k] for r in rows] for k in feats}
    return datasets.Dataset.from_dict(cols, features=feats)


def test_jsonl_round_trip(tmp_path):
    path = write_jsonl_dataset(_rows(), tmp_path / "ds")
    assert path == tmp_path / "ds" / "data.jsonl"
    first = json.loads(path.read_text().splitlines()[0])
    assert first["explicit_image"] == ["images/000000_explicit_image_0.png"]  # relative paths
    _check(load_records(tmp_path / "ds"))
    _check(load_records(path))  # the file itself works too


def test_json_list_with_single_values(tmp_path):
    (tmp_path / "img").mkdir()
    _img(COLOURS[1]).save(tmp_path / "img" / "e.png")
    _img(COLOURS[0]).save(tmp_path / "img" / "s.jpg", quality=100)
    rows = [{"implicit_prompt": "an unripe banana", "explicit_prompt": "a green banana",
             "explicit_image": "img/e.png", "superficial_image": "img/s.jpg"}]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    (rec,) = load_records(tmp_path)
    assert rec.implicit_prompts == ["an unripe banana"]
    assert rec.superficial_prompts == [] and rec.category == "" and rec.task == ""
    assert rec.explicit_images[0].path == tmp_path / "img" / "e.png"
    assert tuple(np.asarray(rec.explicit_images[0].open())[0, 0]) == COLOURS[1]
    assert rec.superficial_images[0].open().mode == "RGB"


def test_save_to_disk_dataset_dict_and_dataset(tmp_path):
    import datasets
    ds = _hf_dataset(_rows())
    datasets.DatasetDict({"train": ds.select([0]), "test": ds}).save_to_disk(
        str(tmp_path / "dd"))
    _check(load_records(tmp_path / "dd", split="test"))
    assert len(load_records(tmp_path / "dd", split="train")) == 1
    with pytest.raises(ScienceT2IError, match=r"several splits.*test.*train"):
        load_records(tmp_path / "dd")
    with pytest.raises(ScienceT2IError, match="split 'validation' not found"):
        load_records(tmp_path / "dd", split="validation")
    ds.save_to_disk(str(tmp_path / "single"))
    _check(load_records(tmp_path / "single"))


def test_parquet_layouts(tmp_path):
    ds = _hf_dataset(_rows())
    # Hub layout: data/<split>-NNNNN-of-NNNNN.parquet
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    ds.to_parquet(str(hub / "test-00000-of-00001.parquet"))
    ds.select([0]).to_parquet(str(hub / "train-00000-of-00001.parquet"))
    _check(load_records(tmp_path / "hub", split="test"))
    # converted layout: <config>/<split>/0000.parquet, two shards read in order
    conv = tmp_path / "conv" / "default" / "test"
    conv.mkdir(parents=True)
    ds.select([0]).to_parquet(str(conv / "0000.parquet"))
    ds.select([1]).to_parquet(str(conv / "0001.parquet"))
    _check(load_records(tmp_path / "conv"))
    # a single file
    ds.to_parquet(str(tmp_path / "one.parquet"))
    _check(load_records(tmp_path / "one.parquet"))


def test_parquet_written_by_pyarrow_with_plain_strings(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    _img(COLOURS[2]).save(buf, format="PNG")
    table = pa.table({"implicit_prompt": ["a pillow in space without gravity"],
                      "explicit_image": [{"bytes": buf.getvalue(), "path": "x.png"}],
                      "law": ["GR"]})
    pq.write_table(table, tmp_path / "data.parquet")
    (rec,) = load_records(tmp_path)
    assert rec.implicit_prompts == ["a pillow in space without gravity"] and rec.task == "GR"
    assert tuple(np.asarray(rec.explicit_images[0].open())[1, 1]) == COLOURS[2]


def test_missing_field_and_image_are_named(tmp_path):
    rows = _rows()
    del rows[1]["explicit_image"]
    write_jsonl_dataset(rows, tmp_path / "a")
    with pytest.raises(ScienceT2IError, match=r"record 1 .*'explicit_image'"):
        load_records(tmp_path / "a")
    # not required -> fine, the record simply has no images
    recs = load_records(tmp_path / "a", require=("implicit_prompt",))
    assert recs[1].explicit_images == []
    write_jsonl_dataset(_rows(), tmp_path / "b")
    (tmp_path / "b" / "images" / "000001_superficial_image_0.png").unlink()
    with pytest.raises(ScienceT2IError,
                       match=r"record 1 field 'superficial_image'\[0\].*not found"):
        load_records(tmp_path / "b")
    rows = _rows()
    rows[0]["implicit_prompt"] = ["  "]
    write_jsonl_dataset(rows, tmp_path / "c")
    with pytest.raises(ScienceT2IError, match=r"record 0.*'implicit_prompt' is empty"):
        load_records(tmp_path / "c")


def test_bad_inputs(tmp_path):
    with pytest.raises(ScienceT2IError, match="dataset not found"):
        load_records(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScienceT2IError, match="no dataset found"):
        load_records(tmp_path / "empty")
    with pytest.raises(ScienceT2IError, match="unknown required field"):
        load_records(tmp_path / "empty", require=("implicit_prompts",))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ScienceT2IError, match="not valid JSON"):
        load_records(tmp_path / "bad.jsonl")
    (tmp_path / "none.jsonl").write_text("\n")
    with pytest.raises(ScienceT2IError, match="no records"):
        load_records(tmp_path / "none.jsonl")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ScienceT2IError, match="cannot decode"):
        ImageRef(path=tmp_path / "corrupt.png").open()
    with pytest.raises(ScienceT2IError, match="cannot decode"):
        ImageRef(data=b"garbage", label="x").open()
    with pytest.raises(ScienceT2IError, match="not found"):
        ImageRef(path=tmp_path / "gone.png").open()


def test_rgba_and_grey_images_open_as_rgb(tmp_path):
    Image.new("RGBA", (3, 3), (10, 20, 30, 128)).save(tmp_path / "a.png")
    Image.new("L", (3, 3), 77).save(tmp_path / "g.png")
    assert ImageRef(path=tmp_path / "a.png").open().mode == "RGB"
    assert tuple(np.asarray(ImageRef(path=tmp_path / "g.png").open())[0, 0]) == (77, 77, 77)
