"""torch.hub entry points for every strhub model name (see ``strhub.hub``).

    model = torch.hub.load('baudm/parseq', 'parseq', pretrained=True)
    model = torch.hub.load('/path/to/clone', 'parseq-tiny', source='local', overrides=['charset=36_lowercase'])

Each entry takes ``pretrained`` (published weights), ``overrides`` (config overrides for a new model), ``device`` and
runtime options (``refine_iters=2`` ...), and returns the system in eval mode: ``system.predict(images)``. Names with a
hyphen are also available with underscores (``parseq_tiny``). ``load`` takes every name strhub reads, Hugging Face
repositories included: ``torch.hub.load('<clone>', 'load', 'microsoft/trocr-base-str', source='local')``.
"""

# Private names: torch.hub.list() shows every public callable of this module as an entry point.
from strhub.hub import create as _create
from strhub.hub import hub_names as _hub_names
from strhub.models.loading import load as _load

dependencies = ['torch', 'lightning', 'hydra', 'omegaconf', 'timm', 'PIL', 'numpy']


def _entry_point(name: str):
    def entry(pretrained: bool = False, **kwargs):
        return _create(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name.replace('-', '_')
    entry.__doc__ = f'{name}: see strhub.hub.create (pretrained, overrides, device, runtime options).'
    return entry


for _name in _hub_names():
    if '/' not in _name:  # Hugging Face repository ids are not Python names: load('owner/name') takes them
        globals()[_name] = globals()[_name.replace('-', '_')] = _entry_point(_name)


def load(name: str, device: str = 'cpu', **runtime):
    """Any model name strhub reads: a checkpoint path or URL, a release name (``parseq``) or a Hugging Face
    repository (``alibaba-damo/mgp-str-base``), in eval mode."""
    return _load(name, device=device, **runtime)
