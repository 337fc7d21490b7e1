"""Text backbone (RoBERTa through transformers) and the tokenizer that feeds it.

Weights come from a local directory or the user's Hugging Face cache when given (never
downloaded); otherwise RoBERTa is built from its config with random weights. The tokenizer is
an HF ``tokenizers.Tokenizer`` whose truncation and padding rules are stored in the
``tokenizer.json`` it saves, so the runtime reproduces tokenization from that file alone.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .config import ProxyFormerConfig, TextConfig

log = logging.getLogger(__name__)

# RoBERTa's special tokens and their ids; the tiny tokenizer uses the same ones.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
PAD_ID = 1
TINY_TOKENIZER_ASSET = "tiny-tokenizer.json"


class TextEncoder(nn.Module):
    """RoBERTa followed by ReferFormer's feature resizer (Linear, LayerNorm, Dropout) to C."""

    def __init__(
        self, config: TextConfig, hidden_dim: int, pretrained: str | Path | None = None
    ) -> None:
        super().__init__()
        from transformers import RobertaConfig, RobertaModel

        if pretrained is not None:
            self.body = RobertaModel.from_pretrained(
                str(pretrained), add_pooling_layer=False, local_files_only=True
            )
            got = self.body.config
            if (got.hidden_size, got.num_hidden_layers) != (config.hidden_size, config.num_layers):
                raise ValueError(
                    f"text weights in {pretrained} have hidden size {got.hidden_size} and "
                    f"{got.num_hidden_layers} layers; the config expects {config.hidden_size} and "
                    f"{config.num_layers}"
                )
            log.info("loaded text encoder weights from %s", pretrained)
        else:
            self.body = RobertaModel(
                RobertaConfig(
                    vocab_size=config.vocab_size,
                    hidden_size=config.hidden_size,
                    num_hidden_layers=config.num_layers,
                    num_attention_heads=config.num_heads,
                    intermediate_size=config.intermediate_size,
                    # RoBERTa offsets positions by padding_idx + 1 = 2.
                    max_position_embeddings=config.max_length + 2,
                    type_vocab_size=1,
                    hidden_dropout_prob=config.dropout,
                    attention_probs_dropout_prob=config.dropout,
                    pad_token_id=PAD_ID,
                    bos_token_id=0,
                    eos_token_id=2,
                ),
                add_pooling_layer=False,
            )
        self.frozen = config.freeze
        if self.frozen:
            self.body.requires_grad_(False)
        self.resizer = nn.Sequential(
            nn.Linear(config.hidden_size, hidden_dim), nn.LayerNorm(hidden_dim), nn.Dropout(0.1)
        )
        self.max_length = config.max_length

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.body.eval()  # a frozen encoder keeps dropout off while the rest trains
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(E, L) token ids and mask -> (E, L, C) text features F_t."""
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.resizer(hidden)


# ----------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------


def configure_tokenizer(tokenizer, max_length: int):
    """Store RoBERTa-style truncation and padding in the tokenizer (and so in its JSON)."""
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token="<pad>")
    return tokenizer


def load_tokenizer(
    config: ProxyFormerConfig, path: str | Path | None = None, text_weights: str | Path | None = None
):
    """The tokenizer for ``config``.

    Order: an explicit ``tokenizer.json`` (or a directory holding one); the directory of local
    text weights; for ``tiny`` the packaged tokenizer; for RoBERTa the HF cache; and, only when
    the text encoder has random weights anyway, the packaged byte-level BPE tokenizer.
    """
    from tokenizers import Tokenizer

    max_length = config.text.max_length
    if path is not None:
        file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer not found: {file}")
        return configure_tokenizer(Tokenizer.from_file(str(file)), max_length)
    if text_weights is not None:
        local = Path(text_weights) / "tokenizer.json"
        found = str(local) if local.is_file() else _tokenizer_from_cache((str(text_weights),))
        if found is None:
            raise FileNotFoundError(
                f"no tokenizer.json with the text weights {text_weights}: pretrained RoBERTa "
                "weights need their own tokenizer (save it with AutoTokenizer.save_pretrained)"
            )
        return configure_tokenizer(Tokenizer.from_file(found), max_length)
    if config.text.name == "roberta":
        cached = _tokenizer_from_cache(("FacebookAI/roberta-base", "roberta-base"))
        if cached is not None:
            return configure_tokenizer(Tokenizer.from_file(cached), max_length)
        log.warning(
            "RoBERTa's tokenizer is not in the local HF cache; using the packaged byte-level "
            "BPE tokenizer (fine for random weights, not for pretrained RoBERTa)"
        )
    return configure_tokenizer(tiny_tokenizer(), max_length)


def _tokenizer_from_cache(repos: tuple[str, ...]) -> str | None:
    """A ``tokenizer.json`` already in the user's HF cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for repo in repos:
        try:
            found = try_to_load_from_cache(repo, "tokenizer.json")
        except ValueError:  # not a valid repo id (a path that does not exist, say)
            continue
        if isinstance(found, str):
            return found
    return None


def tiny_tokenizer():
    """The packaged byte-level BPE tokenizer (built by ``build_tiny_tokenizer``)."""
    from tokenizers import Tokenizer

    asset = resources.files("proxyformer") / "assets" / TINY_TOKENIZER_ASSET
    return Tokenizer.from_str(asset.read_text())


def encode_texts(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, both (E, L) int64, padded to the longest expression."""
    if not texts:
        raise ValueError("no expressions to encode")
    encodings = tokenizer.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
    return ids, mask


# Words of referring expressions: the synthetic set's vocabulary plus common RVOS words, so
# that most expressions tokenize into whole words. Unknown words still split into bytes.
_TINY_WORDS = """
the a an of in on at to with and or is are who which that its his her their this one
left right up down top bottom middle center centre above below under over behind front near
next beside between far close moving moves move going goes walking running standing sitting
jumping flying swimming riding holding carrying playing turning rolling bouncing staying still
static stationary slowly quickly fast slow first second third last other another same only
small big large tiny huge little medium tall short long wide thin
red green blue yellow orange purple pink white black gray grey brown cyan magenta
circle square triangle rectangle star ellipse disk diamond cross ring shape object thing
person man woman boy girl child people dog cat horse bird car bus bike bicycle motorcycle
boat truck train airplane ball surfboard skateboard hand head face shirt hat
entering leaving appears disappears enters leaves hidden occluded partially behind
horizontally vertically diagonally towards away from across around along through
upper lower leftmost rightmost topmost bottommost biggest smallest largest
""".split()


def build_tiny_tokenizer(vocab_size: int = 1024):
    """Train the packaged byte-level BPE tokenizer on the word list above (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Each word several times, alone and in a sentence frame, so whole words become tokens.
    corpus = [f"{w} the {w} a {w}" for w in _TINY_WORDS for _ in range(20)]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>"))
    )
    return tokenizer


if __name__ == "__main__":  # python -m proxyformer.text: rebuild the packaged tokenizer
    logging.basicConfig(level=logging.INFO)
    out = Path(__file__).parent / "assets" / TINY_TOKENIZER_ASSET
    out.parent.mkdir(exist_ok=True)
    build_tiny_tokenizer().save(str(out))
    log.info("wrote %s", out)
