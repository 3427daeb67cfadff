"""Vocabulary parsing, the project's vocabulary files and the prompt-ensembled text classifier."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from proxyclip_pl.vocabulary import TEMPLATES, encode_text_embeddings, flatten_vocabulary, load_vocabulary, parse_vocabulary
from paths import ROOT, SHARED

VOCAB_DIR = ROOT / "datamodules" / "vocab"
#: Optional: the official query files, present only in the development environment (not in a clone of this
#: repository); when the folder exists the project's files are also compared with them string for string.
SHARED = SHARED / "vocab"
COUNTS = {
    "voc21": (21, 46), "voc20": (20, 20), "context60": (60, 60), "context59": (59, 59),
    "coco_object": (81, 97), "coco_stuff": (171, 171), "cityscapes": (19, 19), "ade20k": (150, 150),
}


def test_parse_splits_on_semicolon_space_only_and_strips():
    vocab = parse_vocabulary("sky; wall ;tree\ntraffic light\na, b\nwood \n\n")
    assert vocab == [["sky", "wall ;tree"], ["traffic light"], ["a, b"], ["wood"]]


@pytest.mark.parametrize("key", sorted(COUNTS))
def test_official_vocabularies_counts(key):
    classes, queries = COUNTS[key]
    vocab = load_vocabulary(VOCAB_DIR / f"{key}.txt")
    q, q2c = flatten_vocabulary(vocab)
    assert (len(vocab), len(q)) == (classes, queries)
    assert int(q2c.max()) + 1 == classes and torch.all(q2c[1:] >= q2c[:-1])


def test_voc21_and_coco_object_background_synonyms():
    voc = load_vocabulary(VOCAB_DIR / "voc21.txt")
    assert voc[0][:3] == ["sky", "wall", "tree"] and len(voc[0]) == 26
    assert voc[4] == ["ship"] and voc[11] == ["table"]
    coco = load_vocabulary(VOCAB_DIR / "coco_object.txt")
    assert len(coco[0]) == 17 and coco[10] == ["traffic light"]


#: sha256 of ``json.dumps(load_vocabulary(file))`` (the parsed class/synonym lists), recorded after checking
#: that the project's files equal the official query files string for string; with (first class, last class).
DIGESTS = {
    "ade20k": ("54de501704dd728cae3d584dc42d779a6ee338afcd21361fce1543f5377767ae", ["wall"], ["flag"]),
    "cityscapes": ("fd246b97d94b4cc6893f6b8d875c032921c02b9df71b070a2cf3504d6a9728e6", ["road"], ["bicycle"]),
    "coco_object": ("f642995d02bc360ab4babb440e970b952c11c4ad9a69e7bc787c64b62fa7f142", ["sky", "wall"], ["toothbrush"]),
    "coco_stuff": ("becd6d08455eb73734a706e6f3c37e5ede15b5245bcbc84968d356018b8117e1", ["person"], ["wood"]),
    "context59": ("a1f576d93f4c402858caaeda95be2d2889c991f8698f231b63ae69fd028f8c4f", ["aeroplane"], ["wood"]),
    "context60": ("eb7c005ff074ced670c7758dd0d577288838f45998ad9777d09ad21743f5dff9", ["background"], ["wood"]),
    "voc20": ("ad321aed7503dcc7133924e64de4469663af097ad087808e5eb99be60ae8f7cc", ["aeroplane"], ["tvmonitor"]),
    "voc21": ("0e8452c7dce405256c1c0bdab2071f6f47f3f325d3f5a42c6d0a4ba67cb78920", ["sky", "wall"], ["tvmonitor"]),
}


@pytest.mark.parametrize("key", sorted(COUNTS))
def test_project_vocabularies_equal_the_official_ones(key):
    """Needs nothing outside the repository: the recorded digest pins every class and synonym."""
    digest, first, last = DIGESTS[key]
    ours = load_vocabulary(VOCAB_DIR / f"{key}.txt")
    assert ours[0][:len(first)] == first and ours[-1] == last
    assert hashlib.sha256(json.dumps(ours).encode()).hexdigest() == digest


@pytest.mark.skipif(not SHARED.is_dir(), reason="optional: ../shared/vocab exists only in the development environment")
@pytest.mark.parametrize("key", sorted(COUNTS))
def test_project_vocabularies_equal_shared_copy_string_for_string(key):
    ours = load_vocabulary(VOCAB_DIR / f"{key}.txt")
    reference = [[n.strip() for n in line.split("; ")] for line in (SHARED / f"{key}.txt").read_text().splitlines() if line.strip()]
    assert ours == reference


def test_text_embeddings_normalise_mean_normalise():
    class FakeClip(torch.nn.Module):
        """encode_text returns a fixed random vector per token sequence (by hash of its tokens)."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(100, 6, generator=torch.Generator().manual_seed(0)))

        def encode_text(self, tokens):
            return self.w[tokens.sum(dim=1) % 100] * (1 + tokens[:, :1].float())

    clip = FakeClip()
    tokenizer = lambda texts: torch.tensor([[len(t), sum(map(ord, t)) % 97] for t in texts])  # noqa: E731
    out = encode_text_embeddings(clip, tokenizer, ["cat", "dog"], batch_size=7)
    assert len(TEMPLATES) == 80 and TEMPLATES[0]("cat") == "a bad photo of a cat."
    for i, query in enumerate(["cat", "dog"]):
        per = clip.encode_text(tokenizer([t(query) for t in TEMPLATES]))
        ref = F.normalize(F.normalize(per, dim=-1).mean(0), dim=0)
        assert torch.allclose(out[i], ref, atol=1e-6)
    # normalising before the mean matters (embeddings have different norms here)
    unnormalised = F.normalize(clip.encode_text(tokenizer([t("cat") for t in TEMPLATES])).mean(0), dim=0)
    assert (out[0] - unnormalised).abs().max() > 1e-3
