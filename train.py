#!/usr/bin/env python3
"""Train a scene text recognition model.

    ./train.py +experiment=parseq-tiny dataset=real trainer.max_epochs=10
    ./train.py model=parseq charset=36_lowercase model.batch_size=128
    ./train.py ckpt_path=outputs/parseq/<run>/checkpoints/last.ckpt     # resume
    ./train.py pretrained=parseq dataset=real                             # fine-tune
    ./train.py pretrained=alibaba-damo/mgp-str-base dataset=real          # fine-tune a Hugging Face model

Hydra options: ./train.py --help (groups and their choices), ./train.py --cfg job (the composed config).
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from strhub.cli_args import hydra_user_errors
from strhub.config import CONFIG_DIR, override_hint
from strhub.training import published_run_dir_override, train, with_published_model


@hydra.main(config_path=str(CONFIG_DIR), config_name='main', version_base='1.3')
@hydra_user_errors
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.pretrained:
        # A Hugging Face model brings its architecture, tokenizer and preprocessing; model.* overrides still apply.
        cfg = with_published_model(cfg, HydraConfig.get().overrides.task)
    train(cfg, run_dir)
    logging.getLogger(__name__).info('run directory: %s', run_dir)


if __name__ == '__main__':
    sys.argv += published_run_dir_override(sys.argv[1:])
    try:
        main()
    except SystemExit as exit_:
        # Hydra has printed why it refused the overrides; add the nearest valid key or option where there is one.
        hint = override_hint([a for a in sys.argv[1:] if not a.startswith('-')]) if exit_.code else None
        if hint:
            print(hint, file=sys.stderr)
        raise
