#!/usr/bin/env python3
"""Hyperparameter sweeps with Ray Tune (the learning rate by default): one training run per trial, Optuna search,
ASHA early stopping; trials.csv / trials.md and best_config.yaml in the sweep directory.

    ./tune.py tune.num_samples=20
    ./tune.py +experiment=parseq-tiny dataset=real trainer.max_epochs=2 trainer.val_check_interval=500
    ./tune.py +experiment=tune_abinet-lm data.text_file=words.txt
    ./tune.py +tune.search_space.model.batch_size='{type: choice, values: [128, 256]}'
    ./tune.py tune.ray.address=auto tune.storage_path=/shared/tune          # on a running Ray cluster
    ./tune.py +experiment=parseq-tiny tune.resume=true                      # continue an interrupted sweep
    ./train.py --config-dir outputs/tune/<model>/<sweep> --config-name best_config   # train the best trial

Settings: the tune section of configs/tune.yaml (./tune.py --cfg job shows the composed config).
"""

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from strhub.config import CONFIG_DIR
from strhub.tune import run_sweep


@hydra.main(config_path=str(CONFIG_DIR), config_name='tune', version_base='1.3')
def main(cfg: DictConfig) -> None:
    result = run_sweep(cfg, Path(HydraConfig.get().runtime.output_dir))
    logging.getLogger(__name__).info('sweep directory: %s', result.sweep_dir)


if __name__ == '__main__':
    main()
