#!/usr/bin/env python3
"""Evaluate a trained model on the benchmark test sets and print the results table.

./test.py outputs/parseq/<run>/checkpoints/last.ckpt --benchmark_all_eval
./test.py pretrained=parseq refine_iters:int=2 decode_ar:bool=false
./test.py model.ckpt --test_dirs data/test/generated --errors errors.tsv

Models with several prediction heads (MGP-STR) also get a table of each head's accuracy.
"""

import argparse
import logging
import sys
from pathlib import Path

from strhub.cli_args import checkpoint_spec, parse_runtime_args, resolve_device, run_cli, split_runtime_args
from strhub.config import compose_config
from strhub.data.module import SceneTextDataModule
from strhub.evaluation import (
    check_scored,
    discover_test_sets,
    format_head_table,
    format_skipped,
    run_evaluation,
    write_errors,
    write_results,
)
from strhub.inference import accuracy_change_table, compare_options
from strhub.metrics import TextNormalizer, format_table
from strhub.models.loading import load

log = logging.getLogger('test')


def parse_args(argv=None) -> tuple[argparse.Namespace, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='checkpoint path/URL, or pretrained=<name>')
    parser.add_argument('--data_root', default='data', help='data root holding test/ or evaluation/')
    parser.add_argument('--test_dirs', nargs='+', help='evaluate every LMDB under these directories instead')
    parser.add_argument('--benchmark_all_eval', action='store_true', help='every standard benchmark set present')
    parser.add_argument('--new', action='store_true', help='also the newer sets (ArT, COCOv1.4, Uber)')
    parser.add_argument('--cased', action='store_true', help='case-sensitive comparison')
    parser.add_argument('--punctuation', action='store_true', help='keep punctuation in the comparison')
    parser.add_argument('--rotation', type=float, default=0.0, help='rotate test images by DEG degrees')
    parser.add_argument('--batch_size', type=int, default=512)
    parser.add_argument('--num_workers', type=int, default=2)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--results', help='write the figures to this JSON file')
    parser.add_argument('--errors', help='write every wrong prediction to this TSV file')
    parser.add_argument(
        '--report',
        metavar='DIR',
        help='write an HTML report (results, gallery of wrong predictions, accuracy by length and confidence, '
        'character confusions, attention maps) and its figures as PNGs to DIR',
    )
    parser.add_argument(
        '--options',
        nargs='+',
        default=['none'],
        help='inference option sets (none, int8, compile, bf16, fp16, or +-joined); several also print the accuracy '
        'change from the first',
    )
    argv, runtime = split_runtime_args(sys.argv[1:] if argv is None else list(argv))
    return parser.parse_args(argv), parse_runtime_args(runtime)


def benchmark_groups(configured, all_eval: bool, new: bool) -> dict[str, list[str]]:
    """Title -> benchmark names of the tables test.py prints: the reference implementation's "Benchmark (Subset)" and
    "Benchmark" (and "New" with --new), or with --benchmark_all_eval one table over every standard set."""
    groups = (
        {'': list(configured.all)}
        if all_eval
        else {'Benchmark (Subset)': list(configured.subset), 'Benchmark': list(configured.benchmark)}
    )
    if new:
        groups['New'] = list(configured.new)
    return groups


def grouped_tables(results: dict, groups: dict[str, list[str]]) -> str:
    """One results table per group that has any evaluated set (each with its own Combined row), titled '<group> set:'
    as in the reference implementation."""
    parts = []
    for title, members in groups.items():
        present = {name: results[name] for name in members if name in results}
        if present:
            parts.append((f'{title} set:\n' if title else '') + format_table(present))
    return '\n\n'.join(parts)


def save_log(checkpoint: str, report: str) -> None:
    """Writes the tables to ``<checkpoint>.log.txt`` beside a local checkpoint file, as the reference does."""
    path = Path(checkpoint_spec(checkpoint))
    if not path.is_file():
        return
    target = path.with_name(path.name + '.log.txt')
    try:
        target.write_text(report + '\n', encoding='utf-8')
    except OSError as e:
        log.warning('could not write %s: %s', target, e)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    args, runtime = parse_args(argv)
    print(f'Additional keyword arguments: {runtime}', file=sys.stderr)
    device = resolve_device(args.device)
    system = load(checkpoint_spec(args.checkpoint), device=device, **runtime)
    hp = system.hparams
    cfg = compose_config()
    # Scored on the model's own characters too (a Greek model on Greek labels), within --cased / --punctuation.
    normalizer = TextNormalizer.from_options(
        cased=args.cased, punctuation=args.punctuation, model_charset=system.charset_train
    )
    datamodule = SceneTextDataModule(
        root_dir=args.data_root,
        benchmarks=cfg.benchmarks,
        test_roots=list(cfg.data.test_roots),
        charset_train=system.charset_train,
        charset_test=normalizer.charset,
        max_label_length=system.max_label_length,
        preprocess=system.preprocessing,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    groups = benchmark_groups(cfg.benchmark_groups, args.benchmark_all_eval, args.new)
    if args.test_dirs:
        sets, missing = discover_test_sets(args.test_dirs), []
        groups = {'': list(sets)}
    else:
        names = list(dict.fromkeys(name for members in groups.values() for name in members))
        sets, missing = datamodule.find_benchmarks(names)
    if missing:
        log.warning(
            'benchmark sets not found under %s/{%s}: %s',
            args.data_root,
            ','.join(cfg.data.test_roots),
            ', '.join(missing),
        )
    if not sets and args.test_dirs:
        raise FileNotFoundError(
            f'no LMDB (a directory holding data.mdb) under {", ".join(args.test_dirs)}: create one with '
            'tools/create_lmdb.py'
        )
    if not sets:
        raise FileNotFoundError(
            f'no test set to evaluate: put the benchmark LMDBs under {args.data_root}/test/ (or evaluation/), see '
            'data/README.md, or pass --test_dirs'
        )
    loaders = datamodule.test_dataloaders(sets, rotation=args.rotation)
    collect_errors, collect_samples = bool(args.errors or args.report), bool(args.report)
    runs = compare_options(
        system,
        args.options,
        lambda candidate: run_evaluation(
            candidate, loaders, normalizer, collect_errors, collect_samples=collect_samples
        ),
    )
    evaluation = next(iter(runs.values()))
    results, errors = evaluation.results, evaluation.errors
    check_scored(results, loaders)
    report = grouped_tables(results, groups)
    print(report)
    save_log(args.checkpoint, report)
    if evaluation.skipped:
        print('\n' + format_skipped(evaluation.skipped))
    if len(runs) > 1:
        print('\n' + accuracy_change_table({option: run.results for option, run in runs.items()}))
    if evaluation.heads:
        print(f'\nAccuracy of each prediction head (the table above is {system.final_head}):')
        print(format_head_table(evaluation.heads))
    if args.results:
        # Per-head figures only for multi-head models, so that other models' files are unchanged.
        heads = {'heads': evaluation.heads} if evaluation.heads else {}
        write_results(
            results,
            args.results,
            checkpoint=args.checkpoint,
            options=runtime,
            cased=args.cased,
            punctuation=args.punctuation,
            rotation=args.rotation,
            missing=missing,
            model=hp.name,
            skipped={name: vars(entry) for name, entry in evaluation.skipped.items()},
            **heads,
        )
    if args.errors:
        write_errors(errors, args.errors)
        log.info('%d wrong predictions written to %s', len(errors), args.errors)
    if args.report:
        from strhub.report import write_report

        settings = {'checkpoint': args.checkpoint, 'model': hp.name, 'cased': args.cased}
        settings |= {'punctuation': args.punctuation, 'rotation': args.rotation, 'options': runtime or 'none'}
        page = write_report(
            evaluation, args.report, datamodule.test_preprocess(args.rotation), normalizer, f'{hp.name}: test report',
            system=system, settings=settings,
        )  # fmt: skip
        print(f'\nreport: {page}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
