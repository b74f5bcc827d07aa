"""The synthetic word-image engine: determinism, boxes, glyph coverage, LMDB output and bad input."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
from pathlib import Path

import lmdb
import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image

from strhub.data.charsets import resolve_charset
from strhub.data.synth import (
    RenderConfig,
    SyntheticWordGenerator,
    english_words,
    generate_lmdb,
    load_font_faces,
    package_font_files,
    render_word,
)
from strhub.data.synth.words import words_for_charset

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = ['street', 'Coffee', 'open', 'parking', 'quality', 'exit', 'jump', 'hello', 'world', 'bakery']


def _package_font(file_name: str) -> Path:
    found = [f for f in package_font_files() if f.name == file_name]
    if not found:
        pytest.skip(f'{file_name} is not installed; pip install -r requirements/core.txt')
    return found[0]


def _read_lmdb(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        content = dict(txn.cursor())
    env.close()
    return content


@pytest.fixture(scope='module')
def generator() -> SyntheticWordGenerator:
    return SyntheticWordGenerator(resolve_charset('94_full'), words=WORDS, seed=3, random_ratio=0.3)


def test_samples_depend_only_on_seed_and_index(generator):
    again = SyntheticWordGenerator(resolve_charset('94_full'), words=WORDS, seed=3, random_ratio=0.3)
    other_seed = SyntheticWordGenerator(resolve_charset('94_full'), words=WORDS, seed=4, random_ratio=0.3)
    for index in (0, 7, 123456):
        image, label, boxes = generator.sample(index)
        image_again, label_again, boxes_again = again.sample(index)
        assert image.tobytes() == image_again.tobytes()
        assert (label, boxes) == (label_again, boxes_again)
    first_ten = [generator.sample(i)[0].tobytes() for i in range(10)]
    assert first_ten != [other_seed.sample(i)[0].tobytes() for i in range(10)]
    assert len(set(first_ten)) == 10


def test_images_are_rgb_at_the_configured_height():
    generator = SyntheticWordGenerator('0123456789', random_ratio=1.0, cfg=RenderConfig(height=48))
    for index in range(10):
        image, label, _ = generator.sample(index)
        assert image.mode == 'RGB' and image.height == 48 and image.width >= 1
        assert label.isdigit()


def test_every_box_lies_inside_its_image_one_per_character(generator):
    for index in range(60):
        image, label, boxes = generator.sample(index)
        assert len(boxes) == len(label) > 0
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= image.width
            assert 0 <= y0 < y1 <= image.height


def test_undistorted_boxes_run_left_to_right_and_hold_all_the_ink():
    generator = SyntheticWordGenerator(resolve_charset('62_mixed-case'), words=WORDS, cfg=RenderConfig.plain(32))
    for index in range(40):
        image, label, boxes = generator.sample(index)
        centres = [(x0 + x1) / 2 for x0, _, x1, _ in boxes]
        assert centres == sorted(centres) and len(set(centres)) == len(centres), (label, boxes)
        pixels = np.asarray(image).astype(int)
        ink = np.abs(pixels - pixels[0, 0]).max(axis=-1) > 40  # solid background: the corner is background
        inside = np.zeros_like(ink)
        for x0, y0, x1, y1 in boxes:  # a pixel touching a box counts: edges are anti-aliased
            inside[max(0, int(y0) - 1) : int(np.ceil(y1)) + 1, max(0, int(x0) - 1) : int(np.ceil(x1)) + 1] = True
        assert ink.any() and not (ink & ~inside).any(), (label, boxes)


def test_render_word_boxes_follow_rotation():
    font = _package_font('DejaVuSans.ttf')
    cfg = dataclasses.replace(RenderConfig.plain(32), rotation_prob=1.0, max_rotation=20.0)
    tilts = []
    for seed in range(6):
        _, boxes = render_word('HHHHHH', font, np.random.default_rng(seed), cfg)
        tops = [y0 for _, y0, _, _ in boxes]
        tilts.append(tops[-1] - tops[0])
    # Rotations either way move the last letter well above or below the first one.
    assert max(tilts) > 3 and min(tilts) < -3


def test_a_character_missing_from_a_font_is_never_drawn_with_it(tmp_path):
    source = _package_font('DejaVuSans.ttf')
    lacking_q = tmp_path / 'fonts' / 'NoQ.ttf'
    lacking_q.parent.mkdir()
    font = TTFont(source)
    for table in font['cmap'].tables:
        table.cmap.pop(ord('q'), None)
    font['name'].setName('NoQ Sans', 1, 3, 1, 0x409)  # its own family, not a duplicate of DejaVu Sans
    font.save(lacking_q)
    assert not load_font_faces([lacking_q])[0].covers('q')

    fonts = [lacking_q.parent, _package_font('DejaVuSerif.ttf')]
    generator = SyntheticWordGenerator('abeiquty', words=['quiet', 'beauty', 'tea'], fonts=fonts, random_ratio=0.5)
    plans = [generator.plan(i) for i in range(80)]
    with_q = [p for p in plans if 'q' in p.text]
    assert with_q and any(p.font.path == str(lacking_q) for p in plans)
    assert all(p.font.path != str(lacking_q) for p in with_q)
    assert all(p.label == generator.sample(i)[1] for i, p in enumerate(plans[:5]))


def test_small_caps_fonts_draw_only_uppercase_when_case_matters():
    amatic = _package_font('AmaticSC-Regular.ttf')
    assert not load_font_faces([amatic])[0].shows_case
    generator = SyntheticWordGenerator(resolve_charset('62_mixed-case'), words=WORDS, fonts=[amatic])
    assert not any(c.islower() for c in generator.fonts[0].chars)
    assert all(not any(c.islower() for c in generator.plan(i).label) for i in range(30))


def test_case_insensitive_charset_draws_other_cases_and_labels_lowercase():
    generator = SyntheticWordGenerator(
        resolve_charset('36_lowercase'), words=['hello'], random_ratio=0.0, case_weights=(0.0, 0.0, 1.0)
    )
    plan = generator.plan(0)
    assert (plan.text, plan.label) == ('HELLO', 'hello')


def test_word_lists_are_filtered_to_the_charset(tmp_path):
    assert words_for_charset(['Café', 'Cafe', 'cafe', 'x' * 30], 'acefCF', True, 25) == ('Cafe', 'cafe')
    assert words_for_charset(['Cafe', 'cafe'], 'acef', False, 25) == ('Cafe', 'cafe')
    builtin = english_words()
    assert 'the' in builtin and len(builtin) > 10000
    word_file = tmp_path / 'words.txt'
    word_file.write_text('alpha\n\n  beta \nGAMMA\n', encoding='utf-8')
    generator = SyntheticWordGenerator(resolve_charset('62_mixed-case'), words=word_file)
    assert generator.words == ('alpha', 'beta', 'GAMMA')


def test_bad_input_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match='charset is empty'):
        SyntheticWordGenerator('')
    with pytest.raises(ValueError, match='has no word'):
        SyntheticWordGenerator('abc', words=[])
    unusable = tmp_path / 'digits.txt'
    unusable.write_text('123\n456\n', encoding='utf-8')
    with pytest.raises(ValueError, match=r'digits\.txt has no word.*random_ratio=1'):
        SyntheticWordGenerator('abc', words=unusable)
    with pytest.raises(FileNotFoundError, match='one word per line'):
        SyntheticWordGenerator('abc', words=tmp_path / 'missing.txt')
    (tmp_path / 'empty_fonts').mkdir()
    with pytest.raises(FileNotFoundError, match='no usable .ttf/.otf font'):
        SyntheticWordGenerator('abc', random_ratio=1.0, fonts=[tmp_path / 'empty_fonts'])
    with pytest.raises(ValueError, match='probability'):
        RenderConfig(blur_prob=1.5)
    with pytest.raises(ValueError, match='low <= high'):
        RenderConfig(padding=(0.3, 0.1))


def test_generate_lmdb_reads_back_and_is_the_same_for_any_worker_count(tmp_path):
    common = dict(charset=resolve_charset('94_full'), words=WORDS, seed=5, random_ratio=0.3)
    one = generate_lmdb(tmp_path / 'one', 12, workers=1, **common)
    two = generate_lmdb(tmp_path / 'two', 12, workers=2, **common)
    content = _read_lmdb(one)
    assert content == _read_lmdb(two)

    generator = SyntheticWordGenerator(**common)
    assert content[b'num-samples'] == b'12'
    for k in range(1, 13):
        label = content[f'label-{k:09d}'.encode()].decode()
        boxes = json.loads(content[f'boxes-{k:09d}'.encode()])
        image = Image.open(io.BytesIO(content[f'image-{k:09d}'.encode()]))
        assert label == generator.plan(k - 1).label
        assert len(boxes) == len(label)
        assert image.mode == 'RGB' and image.height == 32
    with pytest.raises(FileExistsError, match='overwrite'):
        generate_lmdb(one, 1, workers=1, **common)


def test_cli_writes_a_dataset(tmp_path):
    spec = importlib.util.spec_from_file_location('synth_cli', REPO_ROOT / 'tools' / 'synth.py')
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / 'digits'
    cli.main(['--out', str(out), '--num', '3', '--charset', '0123456789', '--random-ratio', '1', '--height', '24'])
    content = _read_lmdb(out)
    assert content[b'num-samples'] == b'3'
    assert all(content[f'label-{k:09d}'.encode()].decode().isdigit() for k in (1, 2, 3))
    assert Image.open(io.BytesIO(content[b'image-000000001'])).height == 24


# Every scene-text effect at probability 1, so that each one runs on every sample.
ALL_EFFECTS = dict(
    occluder_prob=1.0,
    lighting_prob=1.0,
    colour_cast_prob=1.0,
    motion_blur_prob=1.0,
    defocus_prob=1.0,
    low_contrast_prob=1.0,
)


@pytest.mark.parametrize('kind', ['texture', 'stripes', 'image'])
def test_scene_effects_and_backgrounds_are_deterministic(kind, tmp_path):
    photos = tmp_path / 'photos'
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(photos / 'a.png')
    cfg = RenderConfig.scene(background_weights={kind: 1.0}, background_images=[str(photos)], **ALL_EFFECTS)
    generator = SyntheticWordGenerator('abcdef', random_ratio=1.0, cfg=cfg, seed=1)
    for index in range(3):
        (a, label_a, boxes_a), (b, label_b, boxes_b) = generator.sample(index), generator.sample(index)
        assert a.mode == 'RGB' and a.height == 32
        assert a.tobytes() == b.tobytes() and label_a == label_b and boxes_a == boxes_b
    assert generator.sample(0)[0].tobytes() != generator.sample(1)[0].tobytes()


def test_scene_preset_keeps_text_visible():
    """The effects must not wipe the word out: text pixels still differ clearly from the background on average."""
    generator = SyntheticWordGenerator('abcdef', random_ratio=1.0, cfg=RenderConfig.scene(), seed=0)
    spreads = [np.asarray(generator.sample(i)[0].convert('L'), np.float32).std() for i in range(40)]
    assert np.median(spreads) > 12


def test_render_presets_and_their_errors(tmp_path):
    assert RenderConfig.preset('plain').blur_prob == 0.0
    assert RenderConfig.preset('scene', blur_prob=0.0).occluder_prob > 0
    with pytest.raises(ValueError, match="valid: 'default', 'plain', 'scene'"):
        RenderConfig.preset('photo')
    with pytest.raises(ValueError, match='background_images is empty'):
        RenderConfig(background_weights={'image': 1.0})
    cfg = RenderConfig(background_weights={'image': 1.0}, background_images=[str(tmp_path)])
    with pytest.raises(FileNotFoundError, match='no background photos'):
        SyntheticWordGenerator('abc', random_ratio=1.0, cfg=cfg).sample(0)
    with pytest.raises(ValueError, match='motion_blur_length'):
        RenderConfig(motion_blur_length=(2, 9))


def test_cli_draws_a_contact_sheet(tmp_path):
    spec = importlib.util.spec_from_file_location('synth_cli', REPO_ROOT / 'tools' / 'synth.py')
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / 'sheet.png'
    cli.main(['--sheet', str(out), '--num', '6', '--charset', 'abc', '--preset', 'scene', '--set', 'blur_prob=1.0'])
    sheet = Image.open(out)
    assert sheet.width > 100 and sheet.height > 40
    with pytest.raises(SystemExit, match='FIELD=VALUE'):
        cli.main(['--sheet', str(out), '--set', 'blurr=1'])
