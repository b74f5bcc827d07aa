#!/usr/bin/env python3
"""Benchmark a model's speed and compute cost (random weights; no data needed).

./bench.py model=parseq
./bench.py +experiment=parseq-tiny device=cpu threads=1 'batch_sizes=[1,64]'
./bench.py model=parseq +range=true +json=bench.json
./bench.py pretrained=microsoft/trocr-base-str                # a published model by name
./bench.py +experiment=parseq-tiny device=cpu 'options=[none,int8,compile,int8+compile]'
"""

import json
import logging

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from strhub.benchmark import compute_table, latency_sweep, latency_vs_length, markdown_table
from strhub.cli_args import hydra_user_errors, resolve_device
from strhub.config import CONFIG_DIR
from strhub.inference import optimize_model, parse_options
from strhub.models.loading import build_system, load

log = logging.getLogger('bench')


@hydra.main(config_path=str(CONFIG_DIR), config_name='bench', version_base='1.3')
@hydra_user_errors
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if cfg.pretrained:  # published weights fix the architecture (a Hugging Face model brings its own config)
        system = load(cfg.pretrained)
    else:
        system = build_system(OmegaConf.to_container(cfg.model, resolve=True))
    model = system.model.eval().to(device)
    img_size, name = list(system.hparams.img_size), system.hparams.name
    report = {'model': name, 'device': str(device), 'threads': torch.get_num_threads()}
    print(f'## {name} on {device} ({torch.get_num_threads()} threads)\n')
    # Parse every option set before timing anything, so that a typo fails at once.
    options = [parse_options(spec) for spec in cfg.get('options') or ['none']]
    report['latency'] = []
    for option in options:
        optimized = optimize_model(model, device, option.compile, option.quantize, option.precision)
        rows = latency_sweep(optimized, img_size, cfg.batch_sizes, device, cfg.min_run_time)
        report['latency'] += [{'option': str(option), **row} for row in rows]
    print(
        markdown_table(
            report['latency'],
            [
                ('Option', 'option', 's'),
                ('Batch', 'batch_size', 'd'),
                ('Median (ms)', 'median_ms', '.2f'),
                ('IQR (ms)', 'iqr_ms', '.2f'),
                ('Images/s', 'images_per_s', '.1f'),
            ],
        )
    )
    if cfg.get('range', False):
        report['range'] = latency_vs_length(
            model, img_size, system.hparams.max_label_length, device, cfg.min_run_time / 2
        )
        print(
            '\n'
            + markdown_table(
                report['range'],
                [
                    ('Label length', 'label_length', 'd'),
                    ('Median (ms)', 'median_ms', '.2f'),
                    ('IQR (ms)', 'iqr_ms', '.2f'),
                ],
            )
        )
    if cfg.compute:
        report['compute'] = compute_table(model, img_size, device)
        print(
            '\n'
            + markdown_table(
                report['compute'],
                [
                    ('Module', 'module', 's'),
                    ('Params (M)', 'params_M', '.3f'),
                    ('GFLOPs', 'gflops', '.3f'),
                    ('Activations (M)', 'mactivations', '.3f'),
                ],
            )
        )
    if cfg.get('json'):
        with open(cfg.json, 'w', encoding='utf-8') as f:
            json.dump(report, f, indent=2)
        log.info('wrote %s', cfg.json)


if __name__ == '__main__':
    main()
