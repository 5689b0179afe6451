"""Face-age data layer: DIR split CSV reading and checks, face transforms, the generated demo faces."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.transforms import Compose
from PIL import Image

from supremix_med.demo.faces import IMAGE_SIZE, generate_faces, main, synthesize_face
from supremix_med.data.sources.face_transforms import (
    IMAGENET_MEAN, IMAGENET_STD, CenterResizedCropd, RandColorJitterd, RandGrayscaled, RandResizedCropd,
    face_augmentation, face_eval_transforms, face_load_transforms, grayscale,
)
from supremix_med.data.sources.faces import FaceDataset, face_records, fingerprint, preprocess, read_dir_split
from supremix_med.engines import multi_view_transform

#: The published AgeDB-DIR split, shipped with the agedb bundle.
AGEDB_CSV = Path(__file__).resolve().parents[1] / "bundles" / "agedb" / "agedb.csv"


def _write_images(folder: Path, names: list[str], shape: tuple[int, int] = (30, 20), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(folder / name)


@pytest.fixture
def faces_dir(tmp_path: Path) -> Path:
    """Four RGB images, a grey-scale one and a damaged one, with a valid split CSV."""
    _write_images(tmp_path, ["img/a.png", "img/b.png", "img/c.png", "img/d.png"])
    Image.fromarray(np.full((30, 20), 90, np.uint8)).save(tmp_path / "img/grey.png")
    (tmp_path / "img/broken.png").write_bytes(b"not an image")
    (tmp_path / "split.csv").write_text(
        "age,path,split\n31,img/a.png,train\n45.5,img/b.png,train\n60,img/c.png,val\n"
        "22,img/d.png,test\n70,img/grey.png,test\n50,img/broken.png,test\n"
    )
    return tmp_path


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------- reading


def test_records_of_a_split(faces_dir: Path) -> None:
    records = face_records(faces_dir / "split.csv", split="train")
    assert records == [
        {"image": str(faces_dir / "img/a.png"), "label": 31.0, "id": "img/a.png", "line": 2},
        {"image": str(faces_dir / "img/b.png"), "label": 45.5, "id": "img/b.png", "line": 3},
    ]
    both = face_records(faces_dir / "split.csv", split=["test", "val"])
    assert [r["line"] for r in both] == [5, 6, 7, 4]
    assert len(face_records(faces_dir / "split.csv", split="all")) == 6


def test_image_dir_and_id_column(faces_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "tables"
    elsewhere.mkdir()
    (elsewhere / "s.csv").write_text("id,age,path,split,extra\nX1,31,img/a.png,train,9\n")
    (record,) = face_records(elsewhere / "s.csv", image_dir=faces_dir)
    assert record["image"] == str(faces_dir / "img/a.png") and record["id"] == "X1"
    with pytest.raises(ValueError, match=r"s\.csv: 1 image file\(s\) not found: line 2"):
        face_records(elsewhere / "s.csv")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("age,file,split\n3,a.png,train\n", r"bad\.csv: missing column\(s\) \['path'\].*found \['age', 'file', 'split'\]"),
        ("age,path,split\n", r"bad\.csv: no rows"),
        ("age,path,split\n3,img/a.png,train\nold,img/b.png,train\n-2,img/c.png,val\n,img/d.png,test\n",
         r"bad\.csv: 3 unusable 'age' label\(s\), plausible range \[0, inf\]: line 3 \(id 'img/b.png'\): 'old' is "
         r"not a number; line 4 \(id 'img/c.png'\): -2 is outside the plausible range \[0, inf\]; line 5 .*: missing"),
        ("age,path,split\n3,img/a.png,train\n4,img/b.png,tst\n",
         r"bad\.csv: 'split' must be one of \('train', 'val', 'test'\); got line 3 \('tst'\)"),
        ("age,path,split\n3,,train\n", r"bad\.csv: empty 'path' at line 2"),
        ("age,path,split\n3,img/a.png,train\n4,img/a.png,test\n", r"bad\.csv: every 'path' must be unique; .*line 3"),
    ],
)
def test_bad_csv_names_file_and_lines(faces_dir: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        face_records(_csv(faces_dir, text))


def test_empty_split_and_unknown_split_name(faces_dir: Path) -> None:
    path = _csv(faces_dir, "age,path,split\n3,img/a.png,train\n")
    with pytest.raises(ValueError, match=r"bad\.csv: split\(s\) \['test'\] have no rows; .*'train': 1"):
        face_records(path, split="test")
    with pytest.raises(ValueError, match="split must be 'all'"):
        face_records(path, split="training")


def test_missing_images_listed_at_most_five(faces_dir: Path) -> None:
    rows = "".join(f"{20 + i},img/missing{i}.png,train\n" for i in range(8))
    path = _csv(faces_dir, "age,path,split\n30,img/a.png,train\n" + rows)
    with pytest.raises(ValueError, match=r"bad\.csv: 8 image file\(s\) not found: line 3 .*line 7 \(.*and 3 more") as error:
        face_records(path)
    assert "line 8" not in str(error.value)
    assert len(face_records(path, check_files=False)) == 9


def test_unreadable_csv(faces_dir: Path) -> None:
    path = faces_dir / "binary.csv"
    path.write_bytes(b"\xff\xfe\x00\x01age")
    with pytest.raises(ValueError, match=r"binary\.csv: not a readable DIR split CSV"):
        read_dir_split(path)


def test_published_agedb_dir_split() -> None:
    table = read_dir_split(AGEDB_CSV, image_dir="/images")
    assert table["split"].value_counts().to_dict() == {"train": 12208, "val": 2140, "test": 2140}
    assert table["path"].str.startswith("/images/AgeDB/").all() and table["age"].between(0, 120).all()


# ----------------------------------------------------------------------------------------------- dataset


def test_face_dataset_items(faces_dir: Path) -> None:
    dataset = FaceDataset(faces_dir / "split.csv", split="train", transform=face_eval_transforms(16))
    item = dataset[1]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert torch.equal(item["label"], torch.tensor([45.5])) and item["id"] == "img/b.png"
    np.testing.assert_array_equal(dataset.labels, np.array([31.0, 45.5], np.float32))
    assert dataset.ids == ["img/a.png", "img/b.png"]


def test_grey_scale_file_loads_as_rgb(faces_dir: Path) -> None:
    item = FaceDataset(faces_dir / "split.csv", split="test")[1]
    assert item["image"].shape == (3, 30, 20)
    torch.testing.assert_close(item["image"], torch.full((3, 30, 20), 90 / 255))


def test_unreadable_image_names_file_and_line(faces_dir: Path) -> None:
    dataset = FaceDataset(faces_dir / "split.csv", split="test")
    with pytest.raises(ValueError, match=r"broken\.png \(line 7 of .*split\.csv\): cannot read the image "
                                         r"\(UnidentifiedImageError"):
        dataset[2]


def test_preprocess_is_the_evaluation_view_and_names_unreadable_files(faces_dir: Path) -> None:
    path = str(faces_dir / "img/a.png")
    expected = Compose([*face_load_transforms(), *face_eval_transforms(16)])({"image": path})["image"]
    out = preprocess(path, image_size=16)
    assert out.dtype == np.float32 and out.shape == (3, 16, 16)
    np.testing.assert_array_equal(out, expected.numpy())
    assert fingerprint(16)["output"]["shape"] == [3, 16, 16] and fingerprint(16)["params"]["crop_fraction"] == 0.875
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        fingerprint(0)
    with pytest.raises(ValueError, match=r"broken\.png: cannot read the image \(UnidentifiedImageError"):
        preprocess(faces_dir / "img/broken.png", image_size=16)


# ----------------------------------------------------------------------------------------------- transforms


def test_load_is_rgb_rows_first_in_unit_range(faces_dir: Path) -> None:
    image = Compose(face_load_transforms())({"image": str(faces_dir / "img/a.png")})["image"]
    expected = np.asarray(Image.open(faces_dir / "img/a.png"), np.float32).transpose(2, 0, 1) / 255.0
    assert type(image) is torch.Tensor and image.shape == (3, 30, 20)
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-6)


def test_augmentation_shape_range_and_seeded_determinism() -> None:
    image = torch.rand(3, 50, 40)
    first = Compose(face_augmentation(32)).set_random_state(seed=3)
    second = Compose(face_augmentation(32)).set_random_state(seed=3)
    outputs = [first({"image": image})["image"] for _ in range(3)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outputs)
    for output in outputs:
        torch.testing.assert_close(output, second({"image": image})["image"])
    assert not torch.equal(outputs[0], outputs[1])
    low = (0.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    high = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for output in outputs:
        assert (output.amin(dim=(1, 2)) >= low - 1e-5).all() and (output.amax(dim=(1, 2)) <= high + 1e-5).all()


def test_multi_view_transform_gives_two_different_views() -> None:
    views = multi_view_transform(face_augmentation(24), seed=1)({"image": torch.rand(3, 40, 40)})
    assert views["image"].shape == views["image_1"].shape == (3, 24, 24)
    assert not torch.equal(views["image"], views["image_1"])


def test_random_resized_crop_area_and_aspect() -> None:
    crop = RandResizedCropd("image", spatial_size=8, scale=(0.2, 1.0))
    crop.set_random_state(seed=0)
    for _ in range(200):
        crop.randomize((90, 120))
        top, left, height, width = crop.box
        assert 0 <= top and top + height <= 90 and 0 <= left and left + width <= 120
        assert 0.2 * 0.95 <= height * width / (90 * 120) <= 1.0
        assert 3 / 4 * 0.9 <= width / height <= 4 / 3 * 1.1


def test_random_resized_crop_fallback_and_identity() -> None:
    crop = RandResizedCropd("image", spatial_size=16, scale=(1.0, 1.0), ratio=(2.0, 2.0))
    crop.randomize((16, 16))  # no region of the whole area has aspect 2: the widest centred one is used
    assert crop.box == (4, 0, 8, 16)
    image = torch.rand(3, 16, 16)
    same = RandResizedCropd("image", spatial_size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(same({"image": image})["image"], image)
    with pytest.raises(ValueError, match="scale must be"):
        RandResizedCropd("image", 8, scale=(0.0, 1.0))


def test_center_resized_crop_is_the_centre_square() -> None:
    image = torch.rand(3, 40, 60)
    out = CenterResizedCropd("image", spatial_size=20, crop_fraction=0.5)({"image": image})["image"]
    torch.testing.assert_close(out, image[:, 10:30, 20:40])


def test_eval_normalises_the_imagenet_mean_to_zero() -> None:
    image = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1).expand(3, 50, 70).clone()
    out = Compose(face_eval_transforms(32))({"image": image})["image"]
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, torch.zeros(3, 32, 32), atol=1e-5, rtol=0)


def _jitter(**amounts: float) -> RandColorJitterd:
    return RandColorJitterd("image", **{"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0,
                                        "prob": 1.0, **amounts})


def test_colour_jitter_hue_by_hand() -> None:
    jitter = _jitter(hue=0.5)
    red = torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1)
    jitter.factors = [("hue", 1 / 3)]
    torch.testing.assert_close(jitter.jitter(red), torch.tensor([0.0, 1.0, 0.0]).reshape(3, 1, 1))
    jitter.factors = [("hue", 0.5)]
    torch.testing.assert_close(jitter.jitter(red), torch.tensor([0.0, 1.0, 1.0]).reshape(3, 1, 1))
    image = torch.rand(3, 4, 5)
    jitter.factors = [("hue", 0.0)]
    torch.testing.assert_close(jitter.jitter(image), image, atol=1e-6, rtol=0)
    jitter.factors = [("hue", 0.1)]
    expected = [colorsys.hsv_to_rgb((h + 0.1) % 1.0, s, v)
                for h, s, v in (colorsys.rgb_to_hsv(*image[:, i, j].tolist()) for i in range(4) for j in range(5))]
    torch.testing.assert_close(jitter.jitter(image), torch.tensor(expected).T.reshape(3, 4, 5), atol=1e-5, rtol=0)


def test_colour_jitter_brightness_contrast_saturation_by_hand() -> None:
    jitter = _jitter(brightness=0.4)
    pixel = torch.tensor([0.5, 0.25, 0.75]).reshape(3, 1, 1)
    image = torch.cat([pixel, torch.tensor([0.1, 0.9, 0.3]).reshape(3, 1, 1)], dim=2)  # [3, 1, 2]
    grey = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    jitter.factors = [("brightness", 1.5)]
    torch.testing.assert_close(jitter.jitter(image), (image * 1.5).clamp(0, 1))
    jitter.factors = [("contrast", 0.6)]
    torch.testing.assert_close(jitter.jitter(image), 0.6 * image + 0.4 * grey.mean())
    jitter.factors = [("saturation", 0.0)]
    torch.testing.assert_close(jitter.jitter(image), grey.expand(3, 1, 2))


def test_colour_jitter_draws_and_probability() -> None:
    jitter = RandColorJitterd("image", brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, prob=1.0)
    jitter.set_random_state(seed=0)
    orders = set()
    for _ in range(50):
        jitter.randomize()
        names = [n for n, _ in jitter.factors]
        assert sorted(names) == ["brightness", "contrast", "hue", "saturation"]
        orders.add(tuple(names))
        for name, factor in jitter.factors:
            assert -0.1 <= factor <= 0.1 if name == "hue" else 0.6 <= factor <= 1.4
    assert len(orders) > 1
    image = torch.rand(3, 5, 5)
    torch.testing.assert_close(RandColorJitterd("image", prob=0.0)({"image": image})["image"], image)
    with pytest.raises(ValueError, match="hue must be in"):
        RandColorJitterd("image", hue=0.7)
    with pytest.raises(ValueError, match=r"RGB image \[3, H, W\], got shape \(1, 5, 5\)"):
        _jitter(brightness=0.4)({"image": torch.rand(1, 5, 5)})


def test_random_grayscale_by_hand() -> None:
    image = torch.tensor([0.2, 0.6, 1.0]).reshape(3, 1, 1).expand(3, 2, 2).clone()
    out = RandGrayscaled("image", prob=1.0)({"image": image})["image"]
    torch.testing.assert_close(out, torch.full((3, 2, 2), 0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 1.0))
    torch.testing.assert_close(grayscale(image), out[:1])
    assert torch.equal(RandGrayscaled("image", prob=0.0)({"image": image})["image"], image)
    converter = RandGrayscaled("image", prob=0.2)
    converter.set_random_state(seed=0)
    converted = sum(bool(converter({"image": image})["image"][0, 0, 0] != 0.2) for _ in range(1000))
    assert abs(converted / 1000 - 0.2) < 0.05


# ----------------------------------------------------------------------------------------------- demo faces


def test_demo_faces_are_deterministic_resumable_and_readable(tmp_path: Path) -> None:
    table = generate_faces(tmp_path / "a", n_subjects=6, seed=4, progress=False)
    again = main(["--output", str(tmp_path / "b"), "--n_subjects", "9", "--seed", "4", "--no_progress"])
    pd.testing.assert_frame_equal(table, again.iloc[:6])
    for path in table["path"]:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    (tmp_path / "a" / table["path"][2]).unlink()
    generate_faces(tmp_path / "a", n_subjects=6, seed=4, progress=False)
    assert (tmp_path / "a" / table["path"][2]).read_bytes() == (tmp_path / "b" / table["path"][2]).read_bytes()
    with pytest.raises(ValueError, match="cohort.json records output generated with"):
        generate_faces(tmp_path / "a", n_subjects=6, seed=5, progress=False)

    records = face_records(tmp_path / "b" / "faces.csv", split="all")
    assert len(records) == 9 and all(18 <= r["label"] <= 80 and r["label"] == int(r["label"]) for r in records)
    with Image.open(records[0]["image"]) as image:
        assert image.mode == "RGB" and image.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_demo_face_stream_shows_one_person_ageing() -> None:
    """One stream at two ages: the same background and pose, and the hair turns grey (brighter than any colour)."""
    centre = IMAGE_SIZE // 2 + 2
    hair = (slice(centre - 27, centre - 19), slice(centre - 6, centre + 6))
    for seed in range(4):
        young = synthesize_face(np.random.default_rng(seed), 20.0, "F").astype(float)
        old = synthesize_face(np.random.default_rng(seed), 78.0, "F").astype(float)
        assert np.array_equal(young[:6, :6], old[:6, :6])
        assert old[hair].mean() > young[hair].mean() + 10.0
