"""Shared fixtures: tiny real models and tokenized expressions (no downloads, no mocks)."""

from __future__ import annotations

import pytest
import torch

from proxyformer.config import get_preset
from proxyformer.model import build_proxyformer
from proxyformer.text import encode_texts, load_tokenizer

EXPRESSIONS = ["the small red circle moving left", "the square above the green triangle"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_config():
    return get_preset("tiny")


@pytest.fixture(scope="session")
def tokenizer(tiny_config):
    return load_tokenizer(tiny_config)


@pytest.fixture(scope="session")
def text_inputs(tokenizer):
    return encode_texts(tokenizer, EXPRESSIONS)


def make_model(config):
    torch.manual_seed(0)
    return build_proxyformer(config)


@pytest.fixture()
def tiny_model(tiny_config):
    return make_model(tiny_config).eval()


def random_frames(batch=2, frames=3, height=64, width=96):
    return torch.randn(batch, frames, 3, height, width)
