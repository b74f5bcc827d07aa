"""Dataset tools: building LMDBs from annotation formats and checking them (strhub.data.create / .inspect)."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

from strhub.data.create import (
    SKIP_EMPTY_LABEL,
    SKIP_MALFORMED,
    SKIP_MISSING_IMAGE,
    SKIP_UNDECODABLE_IMAGE,
    create_lmdb,
    glob_mjsynth_annotations,
    label_from_mjsynth_name,
    parse_icdar_line,
    read_icdar_annotations,
    read_mjsynth_annotations,
    read_tsv_annotations,
)
from strhub.data.inspect import (
    CORRUPT_MISSING_LABEL,
    CORRUPT_NON_UTF8_LABEL,
    CORRUPT_UNDECODABLE_IMAGE,
    draw_contact_sheet,
    inspect_lmdb,
)
from strhub.data.lmdb_writer import LmdbWriter, image_key, label_key

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encoded_image(size: tuple[int, int] = (24, 8), colour=(200, 50, 50), fmt: str = 'PNG') -> bytes:
    buffer = io.BytesIO()
    Image.new('RGB', size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, **kwargs) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encoded_image(**kwargs)
    path.write_bytes(data)
    return data


def read_lmdb(path: Path) -> list[tuple[bytes, str]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        count = int(txn.get(b'num-samples'))
        samples = [(txn.get(image_key(i)), txn.get(label_key(i)).decode()) for i in range(1, count + 1)]
    env.close()
    return samples


def test_tsv_round_trip_keeps_labels_and_image_bytes(shared_dir, tmp_path):
    source = shared_dir / 'data' / 'real' / 'svt_train'
    rows = [line.split('\t', 1) for line in (source / 'labels.tsv').read_text(encoding='utf-8').splitlines()]
    summary = create_lmdb(read_tsv_annotations(source / 'labels.tsv', source / 'images'), tmp_path / 'svt')
    assert summary.written == len(rows) and summary.num_skipped == 0
    samples = read_lmdb(tmp_path / 'svt')
    assert [label for _, label in samples] == [label for _, label in rows]
    for (image, _), (filename, _) in zip(samples, rows, strict=True):
        assert image == (source / 'images' / filename).read_bytes()


@pytest.mark.parametrize(
    ('path', 'label'),
    [
        ('./2911/6/77_heretical_35885.jpg', 'heretical'),
        ('1/1/3_Bread_9.jpg', 'Bread'),
        ('9_A_1.png', 'A'),
        ('2_New_York_55.jpg', 'New_York'),
    ],
)
def test_mjsynth_label_from_name(path, label):
    assert label_from_mjsynth_name(path) == label


@pytest.mark.parametrize('path', ['heretical.jpg', '77_heretical.jpg', 'x_word_3.jpg', '4_word_y.jpg'])
def test_mjsynth_malformed_name_is_an_error(path):
    with pytest.raises(ValueError, match='not an MJSynth name'):
        label_from_mjsynth_name(path)


def test_mjsynth_annotation_file_and_glob_build_the_same_dataset(tmp_path):
    images = tmp_path / 'mj'
    names = ['2911/6/77_heretical_35885.jpg', '2911/6/78_Lights_4.jpg', '3/1/1_42_7.jpg']
    stored = {name: write_image(images / name, fmt='JPEG') for name in names}
    (images / 'annotation.txt').write_text(''.join(f'./{name} {i}\n' for i, name in enumerate(names)))

    create_lmdb(read_mjsynth_annotations(images / 'annotation.txt', images), tmp_path / 'from_list')
    assert read_lmdb(tmp_path / 'from_list') == [
        (stored[names[0]], 'heretical'),
        (stored[names[1]], 'Lights'),
        (stored[names[2]], '42'),
    ]
    create_lmdb(glob_mjsynth_annotations(images, '*/*/*.jpg'), tmp_path / 'from_glob')
    assert sorted(read_lmdb(tmp_path / 'from_glob')) == sorted(read_lmdb(tmp_path / 'from_list'))


@pytest.mark.parametrize(
    ('line', 'expected'),
    [
        ('word_1.png, "Tiredness"', ('word_1.png', 'Tiredness')),
        ('word_2.png, "100,000"', ('word_2.png', '100,000')),
        ('word_3.png, "say \\"hi\\""', ('word_3.png', 'say "hi"')),
        ('word_4.png, "\\""', ('word_4.png', '"')),
        ('word_5.png, "a\\\\b"', ('word_5.png', 'a\\b')),
        ('word_6.png,"C:\\dir"', ('word_6.png', 'C:\\dir')),
        ('word_7.png, unquoted, label', ('word_7.png', 'unquoted, label')),
    ],
)
def test_icdar_line_parsing(line, expected):
    assert parse_icdar_line(line) == expected


def test_icdar_gt_with_bom_commas_and_quotes(tmp_path):
    images = tmp_path / 'ic'
    for i in (1, 2, 3):
        write_image(images / f'word_{i}.png')
    gt = '\ufeffword_1.png, "Tiredness"\r\nword_2.png, "$5,000"\r\nword_3.png, "\\"Joe\'s\\""\r\n'
    (images / 'gt.txt').write_bytes(gt.encode('utf-8'))
    annotations = list(read_icdar_annotations(images / 'gt.txt', images))
    assert annotations[0].image_path == images / 'word_1.png'  # the BOM is not part of the first file name
    create_lmdb(annotations, tmp_path / 'out')
    assert [label for _, label in read_lmdb(tmp_path / 'out')] == ['Tiredness', '$5,000', '"Joe\'s"']


def test_bad_entries_are_skipped_and_reported(tmp_path):
    images = tmp_path / 'images'
    good = write_image(images / 'good.png')
    (images / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG')
    # Noise makes the pixel data much larger than the header, so the cut leaves a readable header: only a full
    # decode finds the problem.
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format='JPEG')
    (images / 'truncated.jpg').write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    write_image(images / 'unlabelled.png')
    lines = ['good.png\tgood', 'corrupt.jpg\tbad', 'truncated.jpg\tcut', 'missing.png\tgone', 'unlabelled.png\t',
             'no tab here']  # fmt: skip
    (tmp_path / 'labels.tsv').write_text('\n'.join(lines) + '\n', encoding='utf-8')

    summary = create_lmdb(read_tsv_annotations(tmp_path / 'labels.tsv', images), tmp_path / 'out')
    assert summary.written == 1
    assert summary.skipped == {SKIP_UNDECODABLE_IMAGE: 2, SKIP_MISSING_IMAGE: 1, SKIP_EMPTY_LABEL: 1, SKIP_MALFORMED: 1}
    assert summary.examples[SKIP_MISSING_IMAGE] == [f'labels.tsv:4: {images / "missing.png"}']
    assert any('labels.tsv:6' in offender for offender in summary.examples[SKIP_MALFORMED])
    report = summary.format()
    assert 'undecodable image: 2' in report and 'corrupt.jpg' in report and 'truncated.jpg' in report
    assert read_lmdb(tmp_path / 'out') == [(good, 'good')]


def test_examples_are_capped_but_all_skips_counted(tmp_path):
    write_image(tmp_path / 'ok.png')
    lines = ['ok.png\tok'] + [f'missing_{i}.png\tx' for i in range(9)]
    (tmp_path / 'labels.tsv').write_text('\n'.join(lines), encoding='utf-8')
    summary = create_lmdb(read_tsv_annotations(tmp_path / 'labels.tsv', tmp_path), tmp_path / 'out', max_examples=3)
    assert summary.skipped[SKIP_MISSING_IMAGE] == 9
    assert len(summary.examples[SKIP_MISSING_IMAGE]) == 3


def test_nothing_valid_writes_nothing(tmp_path):
    (tmp_path / 'labels.tsv').write_text('missing.png\tword\n', encoding='utf-8')
    with pytest.raises(ValueError, match=r'(?s)no valid samples.*missing image: 1'):
        create_lmdb(read_tsv_annotations(tmp_path / 'labels.tsv', tmp_path), tmp_path / 'out')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['labels.tsv']  # no dataset, no leftover temp dir


def test_existing_output_needs_overwrite(tmp_path):
    write_image(tmp_path / 'a.png')
    (tmp_path / 'labels.tsv').write_text('a.png\tfirst\n', encoding='utf-8')
    create_lmdb(read_tsv_annotations(tmp_path / 'labels.tsv', tmp_path), tmp_path / 'out')
    (tmp_path / 'labels.tsv').write_text('a.png\tsecond\n', encoding='utf-8')
    with pytest.raises(FileExistsError, match='--overwrite'):
        create_lmdb(read_tsv_annotations(tmp_path / 'labels.tsv', tmp_path), tmp_path / 'out')
    create_lmdb(read_tsv_annotations(tmp_path / 'labels.tsv', tmp_path), tmp_path / 'out', overwrite=True)
    assert [label for _, label in read_lmdb(tmp_path / 'out')] == ['second']


def test_create_cli_builds_an_lmdb(tmp_path, capsys):
    write_image(tmp_path / 'images' / 'word_1.png')
    (tmp_path / 'gt.txt').write_text('word_1.png, "Hi, there"\n', encoding='utf-8')
    create_tool = load_tool('create_lmdb')
    args = ['icdar', '--images', str(tmp_path / 'images'), '--labels', str(tmp_path / 'gt.txt')]
    assert create_tool.main([*args, '--out', str(tmp_path / 'out')]) == 0
    assert 'wrote 1 samples' in capsys.readouterr().out
    assert [label for _, label in read_lmdb(tmp_path / 'out')] == ['Hi, there']
    assert create_tool.main([*args, '--out', str(tmp_path / 'out')]) == 1
    assert '--overwrite' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        create_tool.main(['mjsynth', '--images', str(tmp_path), '--out', str(tmp_path / 'mj')])
    assert 'exactly one of --labels' in capsys.readouterr().err


@pytest.fixture
def planted_lmdb(tmp_path) -> Path:
    """An LMDB of 5 samples: 1 and 4 are fine, 2 has a corrupt image, 3 a non-UTF-8 label, 5 no label key."""
    path = tmp_path / 'data' / 'planted'
    with LmdbWriter(path) as writer:
        writer.add(encoded_image((30, 10)), 'ab')
        writer.add(b'\x89PNG\r\n\x1a\n garbage', 'cd')
        writer.add(encoded_image((40, 10)), 'placeholder')
        writer.add(encoded_image((50, 20)), 'abc')
        writer.add(encoded_image((20, 10)), 'zz')
    env = lmdb.open(str(path), lock=False)
    with env.begin(write=True) as txn:
        txn.put(label_key(3), 'café'.encode('latin-1'))
        txn.delete(label_key(5))
    env.close()
    return path


def test_inspect_finds_planted_corruption_and_counts(planted_lmdb):
    report = inspect_lmdb(planted_lmdb)
    assert report.num_samples == 5
    assert report.corrupt_counts == {CORRUPT_UNDECODABLE_IMAGE: 1, CORRUPT_NON_UTF8_LABEL: 1, CORRUPT_MISSING_LABEL: 1}
    assert sorted(report.corrupt_entries) == [
        (2, CORRUPT_UNDECODABLE_IMAGE),
        (3, CORRUPT_NON_UTF8_LABEL),
        (5, CORRUPT_MISSING_LABEL),
    ]
    assert report.label_lengths == {2: 2, 3: 1}  # 'ab', 'cd', 'abc'
    assert report.char_counts == {'a': 2, 'b': 2, 'c': 2, 'd': 1}
    assert (report.width.min, report.width.max, report.height.max) == (20, 50, 20)  # 4 decodable images
    text = report.format()
    assert 'non-UTF-8 label: 1 (indices 3)' in text and '5 samples, 3 corrupt' in text


def test_inspect_never_modifies_the_dataset(planted_lmdb):
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in planted_lmdb.iterdir()}
    inspect_lmdb(planted_lmdb)
    draw_contact_sheet(planted_lmdb, planted_lmdb.parent / 'sheet.png')
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in planted_lmdb.iterdir()}
    assert after == before  # in particular, no lock.mdb appears


def test_contact_sheet_is_seeded_and_sized(planted_lmdb, tmp_path):
    out = draw_contact_sheet(planted_lmdb, tmp_path / 'a.png', num=4, seed=1, columns=2, cell_size=(100, 30),
                             font_size=10)  # fmt: skip
    with Image.open(out) as sheet:
        assert sheet.format == 'PNG'
        assert sheet.size == (2 * 100, 2 * (30 + 16))
        first = sheet.tobytes()
    draw_contact_sheet(planted_lmdb, tmp_path / 'b.png', num=4, seed=1, columns=2, cell_size=(100, 30), font_size=10)
    with Image.open(tmp_path / 'b.png') as same:
        assert same.tobytes() == first
    singles = set()
    for seed in range(8):
        draw_contact_sheet(planted_lmdb, tmp_path / 'one.png', num=1, seed=seed)
        with Image.open(tmp_path / 'one.png') as single:
            singles.add(single.tobytes())
    assert len(singles) > 1  # the seed changes which sample is drawn


def test_check_cli_on_a_folder_of_lmdbs(planted_lmdb, tmp_path, capsys):
    with LmdbWriter(tmp_path / 'data' / 'nested' / 'second') as writer:
        writer.add(encoded_image(), 'x')
    check_tool = load_tool('check_lmdb')
    assert check_tool.main([str(tmp_path / 'data'), '--sheet', str(tmp_path / 'sheet.png')]) == 1
    out = capsys.readouterr().out
    assert 'total: 2 LMDBs, 6 samples, 3 corrupt' in out
    assert (tmp_path / 'sheet_nested_second.png').is_file() and (tmp_path / 'sheet_planted.png').is_file()
    (tmp_path / 'empty').mkdir()
    assert check_tool.main([str(tmp_path / 'empty')]) == 2
    assert 'no LMDB under' in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match='not an LMDB directory'):
        inspect_lmdb(tmp_path / 'empty')


def test_check_cli_reports_corruption_sheet_and_json(planted_lmdb, tmp_path, capsys):
    check_tool = load_tool('check_lmdb')
    sheet, report_json = tmp_path / 'sheet.png', tmp_path / 'report.json'
    status = check_tool.main([str(planted_lmdb), '--sheet', str(sheet), '--num', '3', '--json', str(report_json)])
    assert status == 1  # corrupt entries fail the check
    out = capsys.readouterr().out
    assert 'undecodable image: 1 (indices 2)' in out and f'contact sheet: {sheet}' in out
    with Image.open(sheet) as image:
        assert image.format == 'PNG'
    (report,) = json.loads(report_json.read_text(encoding='utf-8'))
    assert report['num_corrupt'] == 3 and report['label_lengths'] == {'2': 2, '3': 1}

    with LmdbWriter(tmp_path / 'clean') as writer:
        writer.add(encoded_image(), 'fine')
    assert check_tool.main([str(tmp_path / 'clean')]) == 0
    assert check_tool.main([str(tmp_path / 'nowhere')]) == 2
    assert 'nowhere' in capsys.readouterr().err
