"""Synthetic scene-text word images with per-character boxes, for training without MJSynth/SynthText.

``SyntheticWordGenerator(charset).sample(i)`` renders one labelled image; :func:`generate_lmdb` writes a dataset.
"""

from strhub.data.synth.config import RenderConfig
from strhub.data.synth.fonts import FontFace, load_font_faces, package_font_files
from strhub.data.synth.generate import generate_lmdb, write_generated_lmdb
from strhub.data.synth.generator import SamplePlan, SyntheticWordGenerator
from strhub.data.synth.render import render_word
from strhub.data.synth.words import english_words, read_word_list

__all__ = [
    'FontFace',
    'RenderConfig',
    'SamplePlan',
    'SyntheticWordGenerator',
    'english_words',
    'generate_lmdb',
    'load_font_faces',
    'package_font_files',
    'read_word_list',
    'render_word',
    'write_generated_lmdb',
]
