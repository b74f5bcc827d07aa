"""PARSeq's published weights: the baudm/parseq v1.0.0 release files, trained on the 94-character charset."""

from __future__ import annotations

from strhub.models.registry import RELEASE, StateDict, register_layout, register_release


@register_layout('parseq_release')
def import_parseq_release(state: StateDict) -> StateDict:
    """The published PARSeq files hold the bare model (``encoder.*``, ``decoder.*`` ...); ours nests it in ``model``."""
    if any(k.startswith('model.') for k in state):
        return dict(state)
    return {f'model.{k}': v for k, v in state.items()}


FULL = ('charset=94_full',)
register_release('parseq', f'{RELEASE}/parseq-bb5792a6.pt', 'parseq', 'parseq_release', FULL)
register_release(
    'parseq-tiny', f'{RELEASE}/parseq_tiny-e7a21b54.pt', 'parseq-tiny', 'parseq_release', FULL, aliases=('parseq_tiny',)
)
register_release(
    'parseq-patch16-224',
    f'{RELEASE}/parseq_small_patch16_224-fcf06f5a.pt',
    'parseq-patch16-224',
    'parseq_release',
    FULL,
    aliases=('parseq_small_patch16_224',),
)
