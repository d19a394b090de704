"""Studio folders, image decoding, the dataset, the demo federation and sketchification."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_dilation
from skimage import data as skdata
from skimage.morphology import skeletonize

from fedgai.cli import main
from fedgai.data import (
    DEMO_STYLES,
    MIN_SIZE,
    SKETCH_STYLES,
    SketchPairDataset,
    StudioDataError,
    list_images,
    load_studio,
    make_demo,
    read_image,
    sketchify_folder,
    sketchify_image,
)
from fedgai.data import demo as demo_module

torch.set_num_threads(1)


def _save(path: Path, size: tuple[int, int] = (80, 80), mode: str = "RGB",
          colour: object = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def _save_array(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _studio(root: Path, stems: tuple[str, ...] = ("a", "b")) -> Path:
    for stem in stems:
        _save(root / "photos" / f"{stem}.png")
        _save(root / "sketches" / f"{stem}.png", mode="L", colour=255)
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _problems(root: Path) -> list[str]:
    with pytest.raises(StudioDataError) as caught:
        load_studio(root)
    return caught.value.problems


# ---------------------------------------------------------------- studio folders


def test_valid_studio_pairs_sorted_by_stem_and_named_after_folder(tmp_path: Path) -> None:
    root = _studio(tmp_path / "atelier", ("b", "a", "c"))
    studio = load_studio(root)
    assert studio.name == "atelier"
    assert studio.designer is None and studio.licence is None
    assert [(p.name, s.name) for p, s in studio.pairs] == [(f"{c}.png", f"{c}.png") for c in "abc"]


def test_studio_json_fields_and_mixed_extension_case(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _save(root / "photos" / "look1.JPG")
    _save(root / "sketches" / "look1.webp", mode="L", colour=0)
    (root / "photos" / "notes.txt").write_text("not an image")
    meta = {"name": "Maison X", "designer": "Ada", "licence": "CC-BY-4.0"}
    (root / "studio.json").write_text(json.dumps(meta))
    studio = load_studio(root)
    assert (studio.name, studio.designer, studio.licence) == ("Maison X", "Ada", "CC-BY-4.0")
    assert [(p.name, s.name) for p, s in studio.pairs] == [("look1.JPG", "look1.webp")]


def _unreadable_unpaired(root: Path) -> str:
    (root / "photos-unpaired").mkdir()
    (root / "photos-unpaired" / "p.png").write_bytes(b"not a png")
    return "photos-unpaired/p.png: cannot be read"


def _unmatched_sketch(root: Path) -> str:
    _save(root / "sketches" / "x.jpg", mode="L", colour=0)
    return "sketches/x.jpg: no matching photo"


def _corrupt(root: Path) -> str:
    (root / "sketches" / "a.png").write_bytes(b"this is not a png")
    return "sketches/a.png: cannot be read (corrupt or not an image)"


def _truncated(root: Path) -> str:
    noise = np.random.default_rng(0).integers(0, 255, (90, 90, 3), np.uint8)
    full = _save_array(root / "photos" / "b.png", noise)
    full.write_bytes(full.read_bytes()[:-2000])
    return "photos/b.png: cannot be read (corrupt or not an image)"


def _too_small(root: Path) -> str:
    _save(root / "photos" / "a.png", size=(20, 30))
    return f"photos/a.png: 20x30 px is below the minimum {MIN_SIZE} px"


def _duplicate(root: Path) -> str:
    _save(root / "photos" / "a.jpg")
    return "photos/a.jpg and photos/a.png: duplicate stem 'a'"


def _bad_json(root: Path) -> str:
    (root / "studio.json").write_text('{"name": "x",')
    return "studio.json: invalid JSON"


def _wrong_json_type(root: Path) -> str:
    (root / "studio.json").write_text(json.dumps({"name": 3}))
    return "studio.json: 'name' must be a string, got 3"


@pytest.mark.parametrize("breaks", [_unreadable_unpaired, _unmatched_sketch, _corrupt, _truncated, _too_small,
                                    _duplicate, _bad_json, _wrong_json_type])
def test_each_bad_input_is_reported_naming_the_file(tmp_path: Path, breaks: object) -> None:
    root = _studio(tmp_path / "studio")
    expected = breaks(root)
    problems = _problems(root)
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_photos_without_a_sketch_are_unpaired_not_problems(tmp_path: Path, capsys) -> None:
    root = _studio(tmp_path / "studio", ("a", "b"))
    _save(root / "photos" / "drawn-later.png")
    for stem in ("u1", "u2"):
        _save(root / "photos-unpaired" / f"{stem}.jpg")
    studio = load_studio(root)
    assert [p.stem for p, _ in studio.pairs] == ["a", "b"]
    assert [p.name for p in studio.unpaired] == ["drawn-later.png", "u1.jpg", "u2.jpg"]
    assert main(["data", "check", str(root)]) == 0
    assert "2 photo-sketch pairs, 3 unpaired photos" in capsys.readouterr().out


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "photos").mkdir(parents=True)
    (empty / "sketches").mkdir()
    assert _problems(empty)[0].startswith("studio is empty: no photo-sketch pairs")
    missing = tmp_path / "missing"
    _save(missing / "photos" / "a.png")
    assert _problems(missing) == ["sketches/: folder is missing"]
    assert _problems(tmp_path / "nowhere") == ["folder does not exist"]


def test_all_problems_arrive_in_one_error_with_a_headline(tmp_path: Path) -> None:
    root = _studio(tmp_path / "messy", ("a", "b", "c"))
    breakers = (_unreadable_unpaired, _unmatched_sketch, _corrupt, _too_small, _bad_json)
    expected = [breaks(root) for breaks in breakers]
    with pytest.raises(StudioDataError) as caught:
        load_studio(root)
    err = caught.value
    assert len(err.problems) == len(expected)
    for problem in expected:
        assert any(p.startswith(problem) for p in err.problems), problem
    headline, *lines = str(err).splitlines()
    assert str(root) in headline and "5 problems" in headline
    assert len(lines) == 5 and all(line.startswith("  - ") for line in lines)


def test_min_size_is_configurable(tmp_path: Path) -> None:
    root = _studio(tmp_path / "s")
    assert len(load_studio(root, min_size=80).pairs) == 2
    small = [f"{kind}/{stem}.png: 80x80 px is below the minimum 81 px"
             for kind in ("photos", "sketches") for stem in "ab"]
    empty = "studio is empty: no photo-sketch pairs (images must end in .png, .jpg, .jpeg, .webp)"
    assert _problems_with(root, 81) == [*small, empty]


def _problems_with(root: Path, min_size: int) -> list[str]:
    with pytest.raises(StudioDataError) as caught:
        load_studio(root, min_size=min_size)
    return caught.value.problems


def test_list_images_filters_and_sorts(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpeg", "c.webp", "._a.png", "d.gif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpeg", "b.PNG", "c.webp"]


# ---------------------------------------------------------------- decoding


def test_transparent_rgba_and_la_become_white_paper(tmp_path: Path) -> None:
    rgba = _save(tmp_path / "rgba.png", mode="RGBA", colour=(0, 0, 0, 0))
    la = _save(tmp_path / "la.png", mode="LA", colour=(0, 0))
    assert torch.allclose(read_image(rgba, 3, 64), torch.ones(3, 64, 64))
    assert torch.allclose(read_image(la, 1, 64), torch.ones(1, 64, 64))
    half = _save(tmp_path / "half.png", mode="RGBA", colour=(0, 0, 0, 128))
    assert read_image(half, 1, 64).mean().item() == pytest.approx(2 * (1 - 128 / 255) - 1, abs=1e-3)


def test_sixteen_bit_grayscale_uses_the_full_range(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    values = np.full((64, 64), 65535, dtype=np.uint16)
    values[:, 32:] = 0
    Image.fromarray(values).save(path)
    tensor = read_image(path, 1, 64)
    assert tensor[0, :, :28].min().item() == pytest.approx(1.0)
    assert tensor[0, :, 36:].max().item() == pytest.approx(-1.0)


def test_palette_and_grayscale_images(tmp_path: Path) -> None:
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    palette.save(tmp_path / "p.png")
    red = read_image(tmp_path / "p.png", 3, 32)
    assert torch.allclose(red[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    gray = read_image(_save(tmp_path / "g.png", mode="L", colour=255), 3, 32)
    assert gray.shape == (3, 32, 32) and torch.allclose(gray, torch.ones_like(gray))
    assert load_studio(_mixed_mode_studio(tmp_path / "modes")).pairs


def _mixed_mode_studio(root: Path) -> Path:
    _save(root / "photos" / "a.png", mode="P", colour=3)
    _save(root / "photos" / "b.png", mode="RGBA", colour=(1, 2, 3, 0))
    _save_array(root / "sketches" / "a.png", np.zeros((70, 70), np.uint16))
    _save(root / "sketches" / "b.png", mode="LA", colour=(0, 255))
    return root


def test_read_image_centre_crops_and_respects_exif_orientation(tmp_path: Path) -> None:
    wide = np.zeros((64, 128, 3), np.uint8)
    wide[:, :32] = (255, 0, 0)  # only outside the centre square
    Image.fromarray(wide).save(tmp_path / "wide.png")
    tensor = read_image(tmp_path / "wide.png", 3, 32)
    assert tensor.shape == (3, 32, 32) and tensor[0].max().item() == pytest.approx(-1.0)
    upside = np.zeros((64, 64), np.uint8)
    upside[32:] = 255  # bottom white, but EXIF says "rotate 180"
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(upside).save(tmp_path / "turned.png", exif=exif)
    turned = read_image(tmp_path / "turned.png", 1, 64)
    assert turned[0, :28].mean().item() == pytest.approx(1.0)
    assert turned[0, 36:].mean().item() == pytest.approx(-1.0)


def test_read_image_rejects_other_channel_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channels"):
        read_image(_save(tmp_path / "a.png"), 2, 32)


# ---------------------------------------------------------------- dataset


def test_loader_and_dataset_never_write_into_the_studio(tmp_path: Path) -> None:
    root = _studio(tmp_path / "s", ("a", "b", "c"))
    (root / "studio.json").write_text(json.dumps({"name": "n"}))
    before = _snapshot(root)
    dataset = SketchPairDataset(load_studio(root), image_size=32, augment=True)
    _ = [dataset[i] for i in range(len(dataset))]
    with pytest.raises(StudioDataError):
        load_studio(root, min_size=1000)
    assert _snapshot(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_dataset_shapes_ranges_order_and_cache(tmp_path: Path) -> None:
    root = _studio(tmp_path / "s", ("c", "a", "b"))
    dataset = SketchPairDataset(load_studio(root), image_size=32, max_pairs=2)
    assert len(dataset) == 2 and [p.stem for p, _ in dataset.pairs] == ["a", "b"]
    photo, sketch = dataset[0]
    assert photo.shape == (3, 32, 32) and sketch.shape == (1, 32, 32)
    assert photo.dtype == sketch.dtype == torch.float32
    assert photo.min() >= -1 and photo.max() <= 1 and sketch.min() >= -1 and sketch.max() <= 1
    assert torch.allclose(photo[:, 0, 0], torch.tensor([200, 30, 30]) / 127.5 - 1, atol=1e-3)
    photo.zero_()  # a caller's in-place edit must not reach the cache
    for path in dataset.pairs[0]:
        path.unlink()  # cached: no second decode
    assert torch.equal(dataset[0][0], read_image(dataset.pairs[1][0], 3, 32))
    with pytest.raises(IndexError):
        dataset[2]
    with pytest.raises(ValueError, match="max_pairs"):
        SketchPairDataset(load_studio(_studio(tmp_path / "t")), image_size=32, max_pairs=0)


def test_augmentation_flips_photo_and_sketch_together(tmp_path: Path) -> None:
    root = tmp_path / "s"
    left = np.full((64, 64, 3), 255, np.uint8)
    left[:, :16] = 0
    _save_array(root / "photos" / "a.png", left)
    _save_array(root / "sketches" / "a.png", np.ascontiguousarray(left[..., 0]))
    dataset = SketchPairDataset(load_studio(root), image_size=32, augment=True)
    torch.manual_seed(0)
    flipped = []
    for _ in range(40):
        photo, sketch = dataset[0]
        photo_flipped = photo[0, :, -1].mean() < 0
        assert photo_flipped == (sketch[0, :, -1].mean() < 0)
        flipped.append(bool(photo_flipped))
    assert 5 < sum(flipped) < 35


# ---------------------------------------------------------------- demo federation


@pytest.fixture
def small_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few pairs per studio: the determinism checks need whole federations, not big ones."""
    monkeypatch.setattr(demo_module, "PAIRS_RANGE", (3, 6))


def _bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_is_byte_identical_per_seed_and_differs_across_seeds(tmp_path: Path, small_demo: None) -> None:
    first = make_demo(tmp_path / "a", studios=2, seed=0, size=64, progress=False)
    make_demo(tmp_path / "b", studios=2, seed=0, size=64, progress=False)
    make_demo(tmp_path / "c", studios=2, seed=1, size=64, progress=False)
    assert [f.name for f in first] == ["studio-01-fine", "studio-02-marker"]
    same, other = _bytes(tmp_path / "a"), _bytes(tmp_path / "b")
    assert same == other
    changed = _bytes(tmp_path / "c")
    common = set(same) & set(changed)
    assert any(name.endswith(".png") for name in common)
    assert all(same[name] != changed[name] for name in common if name.endswith(".png"))


def test_demo_studios_are_valid_heterogeneous_and_styled(tmp_path: Path) -> None:
    folders = make_demo(tmp_path / "fed", studios=2, seed=0, size=64, progress=False)
    studios = [load_studio(f) for f in folders]
    counts = [len(s.pairs) for s in studios]
    assert counts == demo_module.studio_sizes(2, 0)
    assert all(40 <= n <= 250 for n in counts) and counts[0] != counts[1]
    meta = json.loads((folders[1] / "studio.json").read_text())
    assert meta["style"] == "marker" and meta["licence"] == "CC0-1.0 (generated by fedgai)"
    assert studios[1].name == "studio-02-marker" and studios[1].designer
    assert {Image.open(sketch).mode for st in studios for _, sketch in st.pairs} == {"L"}
    photo = np.asarray(Image.open(studios[0].pairs[0][0]))
    assert photo.shape == (64, 64, 3) and photo.std() > 5
    black = [np.mean([(np.asarray(Image.open(s)) < 30).mean() for _, s in st.pairs[:20]]) for st in studios]
    assert black[0] == 0 and black[1] > 0.02  # fine grey contour vs bold black marker


def test_studio_sizes_are_spread_distinct_and_seeded() -> None:
    sizes = demo_module.studio_sizes(8, 0, small=())
    assert all(40 <= n <= 250 for n in sizes) and len(set(sizes)) == 8
    assert max(sizes) > 2 * min(sizes)
    assert sizes == demo_module.studio_sizes(8, 0, small=()) != demo_module.studio_sizes(8, 1, small=())


@pytest.mark.parametrize("seed", [0, 1, 15])
def test_default_demo_ends_with_a_10_and_a_20_pair_studio_and_keeps_the_others(seed: int) -> None:
    sizes, before = demo_module.studio_sizes(8, seed), demo_module.studio_sizes(8, seed, small=())
    assert sizes[-2:] == [10, 20]
    assert sizes[:-2] == before[:-2] and all(40 <= n <= 250 for n in sizes[:-2])  # the larger ones unchanged
    assert demo_module.studio_sizes(2, seed) == demo_module.studio_sizes(2, seed, small=())  # too few to add any


def test_small_demo_studios_exist_and_every_studio_splits_with_val_and_test(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from fedgai.config import TrainConfig
    from fedgai.data.split import split_studio

    monkeypatch.setattr(demo_module, "PAIRS_RANGE", (40, 41))  # one large studio, kept cheap
    folders = make_demo(tmp_path / "fed", studios=3, seed=0, size=64, progress=False)
    counts = {f.name: len(load_studio(f).pairs) for f in folders}
    assert list(counts.values())[1:] == [10, 20], counts
    t = TrainConfig()
    for folder in folders:
        split = split_studio(load_studio(folder), t.split_seed, t.val_fraction, t.test_fraction)
        assert split.val and split.test and len(split.train) >= 2, folder.name
        assert len(split.train) + len(split.val) + len(split.test) == counts[folder.name]
    assert split_studio(load_studio(folders[1]), 0, 0.1, 0.2).test.__len__() == 2  # 10 pairs: 7 / 1 / 2


def test_small_demo_studios_are_chosen_on_the_command_line(tmp_path: Path) -> None:
    from fedgai.cli import pair_counts

    assert pair_counts("10,20") == (10, 20) and pair_counts("") == ()  # '' = the demo before small studios
    assert main(["data", "demo", "--studios", "2", "--size", "64", "--small", "5", "--out", str(tmp_path / "a")]) == 0
    assert len(list((tmp_path / "a" / "studio-02-marker" / "sketches").iterdir())) == 5
    with pytest.raises(ValueError, match="small demo studio of 3 pairs cannot be split"):
        make_demo(tmp_path / "b", studios=3, small=(3,), progress=False)


def test_studios_differ_in_garment_mix() -> None:
    mixes = [demo_module.studio_taste(i, 0).kind_weights for i in range(4)]
    assert all(np.isclose(m.sum(), 1.0) for m in mixes)
    assert min(np.abs(a - b).max() for a, b in itertools.combinations(mixes, 2)) > 0.05


def _style_features(sketch: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Coverage, dark/mid/light pixel shares, ink outside the garment and mean stroke thickness."""
    ink = 1.0 - sketch
    solid = ink > 0.5
    outside = ~binary_dilation(mask > 0.5, iterations=3)
    return np.array([ink.mean(), (sketch < 0.3).mean(), ((sketch >= 0.3) & (sketch < 0.85)).mean(),
                     ((sketch >= 0.85) & (sketch < 0.98)).mean(), ink[outside].mean(),
                     solid.sum() / max(1, skeletonize(solid).sum())])


@pytest.mark.parametrize("kind", ["coat", "dress"])
def test_every_demo_style_draws_the_same_garment_differently(kind: str) -> None:
    size = 128
    garment = demo_module.make_garment(kind, np.random.default_rng([0, 7]))
    tone = demo_module.garment_tone(garment, size)
    features = {}
    for style in DEMO_STYLES:
        sketch = np.asarray(demo_module.render_sketch(garment, tone, style, np.random.default_rng(0), size),
                            dtype=np.float32) / 255
        assert sketch[:4, :4].min() == 1.0  # white paper in the corner
        lines = sketch < 0.9
        near = binary_dilation(tone.mask > 0.5, iterations=6)
        assert (lines & near).sum() > 0.8 * lines.sum()  # drawn from the garment's geometry
        features[style] = _style_features(sketch, tone.mask)
    for a, b in itertools.combinations(DEMO_STYLES, 2):
        relative = np.abs(features[a] - features[b]) / (np.maximum(features[a], features[b]) + 1e-3)
        assert relative.max() > 0.25, (a, b)


def test_make_demo_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="studios"):
        make_demo(tmp_path / "x", studios=0)
    with pytest.raises(ValueError, match="64"):
        make_demo(tmp_path / "x", size=32)
    with pytest.raises(ValueError, match="seed"):
        make_demo(tmp_path / "x", seed=-1)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        make_demo(tmp_path / "used", studios=1)
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------- sketchify


@pytest.mark.parametrize("style", sorted(SKETCH_STYLES))
def test_sketch_styles_give_ink_on_white_paper(style: str) -> None:
    photo = skdata.chelsea()[::2, ::2]
    sketch = sketchify_image(photo, style)
    assert sketch.dtype == np.uint8 and sketch.shape == photo.shape[:2]
    assert np.median(sketch) >= 250  # mostly paper
    assert 0.01 < (sketch < 128).mean() < 0.5  # but clearly drawn on


def test_sketch_styles_differ_and_accept_gray_and_rgba() -> None:
    photo = skdata.coffee()[::3, ::3]
    sketches = {style: sketchify_image(photo, style).astype(np.float32) for style in SKETCH_STYLES}
    for a, b in itertools.combinations(SKETCH_STYLES, 2):
        assert np.abs(sketches[a] - sketches[b]).mean() > 5, (a, b)
    gray = sketchify_image(skdata.camera()[::4, ::4], "xdog")
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    assert gray.shape == (128, 128) and np.array_equal(sketchify_image(rgba, "contour"), sketches["contour"])


def test_unknown_sketch_style_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="contour, xdog, marker, hatching, soft"):
        sketchify_image(np.zeros((64, 64, 3), np.uint8), "watercolour")
    with pytest.raises(ValueError, match="H x W"):
        sketchify_image(np.zeros((64, 64, 2), np.uint8), "xdog")


def _photo_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    Image.fromarray(skdata.chelsea()).save(folder / "cat.jpg")
    Image.fromarray(skdata.astronaut()).convert("RGBA").save(folder / "astronaut.png")
    return folder


def test_sketchify_folder_round_trips_through_load_studio(tmp_path: Path) -> None:
    photos = _photo_folder(tmp_path / "shoot")
    before = _snapshot(photos)
    out = sketchify_folder(photos, "hatching", tmp_path / "studio", size=96, progress=False)
    assert _snapshot(photos) == before
    studio = load_studio(out)
    assert studio.name == "studio"
    assert [p.name for p, _ in studio.pairs] == ["astronaut.png", "cat.png"]
    assert json.loads((out / "studio.json").read_text())["style"] == "hatching"
    cat = Image.open(out / "photos" / "cat.png")
    assert cat.mode == "RGB" and min(cat.size) == 96 and cat.size[0] > cat.size[1]
    assert {Image.open(sketch).mode for _, sketch in studio.pairs} == {"L"}  # single-channel sketches


def test_sketchify_folder_refuses_to_write_into_the_photos(tmp_path: Path) -> None:
    photos = _photo_folder(tmp_path / "shoot")
    before = _snapshot(photos)
    for out in (photos, photos / "studio", photos.parent):
        with pytest.raises((ValueError, FileExistsError), match="photos folder|not an empty folder"):
            sketchify_folder(photos, "contour", out, progress=False)
    assert _snapshot(photos) == before


def test_sketchify_folder_lists_every_bad_photo_before_writing(tmp_path: Path) -> None:
    photos = _photo_folder(tmp_path / "shoot")
    (photos / "broken.png").write_bytes(b"garbage")
    _save(photos / "thumb.png", size=(40, 40))
    _save(photos / "cat.png")
    with pytest.raises(StudioDataError) as caught:
        sketchify_folder(photos, "xdog", tmp_path / "out", progress=False)
    assert caught.value.problems == [
        "broken.png: cannot be read (corrupt or not an image)",
        f"thumb.png: 40x40 px is below the minimum {MIN_SIZE} px",
        "cat.jpg and cat.png: duplicate stem 'cat'",
    ]
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown sketch style"):
        sketchify_folder(photos, "oil", tmp_path / "out", progress=False)
