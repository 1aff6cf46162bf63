"""The cache keys of the book's classifiers and NEMs stay what they are: hours of training are
stored under them (``<cache>/classifiers/<key>.*`` and ``<cache>/nems/<classifier key>-<kind>-<digest>/``).

The classifier keys were computed from the code as it stood before the cache moved into ranem.zoo
(commit f51c6ab), the gpu ones since gpu mode went offline (EfficientNet-Lite2 from its wheel, a
ViT-Tiny trained here, the budget of one GPU run), the NEM digests since NEM_CACHE_VERSION 3 (NEMs
record the fingerprint of the classifier with its BatchNorms folded), the synthetic ones since their classifier stops training at the
first epoch that reaches the validation accuracy ``synthetic_stop_at`` (95%).
A change that must retrain on purpose bumps CACHE_VERSION or NEM_CACHE_VERSION and updates these
values in the same commit; any other change of them is a bug. Computing a key needs no
training, no data and no network, so every run mode is checked, not only the quick one.
"""
import pytest

from ranem import config
from ranem.zoo import cache_key, classifier_spec, nem_key, nem_spec

CASES = [(mode, dataset, kind) for mode in config.MODES for dataset in ("imagenette", "synthetic")
         for kind in ("cnn", "vit")]
NEM_KINDS = ("ranem", "nemt", "ranem_insdel")

CLASSIFIER_KEYS = {
    "quick/imagenette/cnn": "imagenette-tf_efficientnet_lite0-432baae5d2dd",
    "quick/imagenette/vit": "imagenette-vit_tiny_patch16_224-7658cc8235d4",
    "quick/synthetic/cnn": "synthetic-resnet10t-fe9271f326ac",
    "quick/synthetic/vit": "synthetic-vit_tiny_patch16_224-c7a3135410ae",
    "cpu/imagenette/cnn": "imagenette-tf_efficientnet_lite0-38c49fe02275",
    "cpu/imagenette/vit": "imagenette-vit_tiny_patch16_224-60afee40064f",
    "cpu/synthetic/cnn": "synthetic-resnet10t-e30c0e73514e",
    "cpu/synthetic/vit": "synthetic-vit_tiny_patch16_224-b53c087efd37",
    "gpu/imagenette/cnn": "imagenette-tf_efficientnet_lite2-d3f324af0694",
    "gpu/imagenette/vit": "imagenette-vit_tiny_patch16_224-814cc90b2887",
    "gpu/synthetic/cnn": "synthetic-resnet10t-74b068925311",
    "gpu/synthetic/vit": "synthetic-vit_tiny_patch16_224-9f4f19dc381a",
}
NEM_DIGESTS = {
    "quick/imagenette/cnn/ranem": "207a25ef8099",
    "quick/imagenette/cnn/nemt": "fd8b20cbcfcc",
    "quick/imagenette/cnn/ranem_insdel": "6a89cc139ec7",
    "quick/imagenette/vit/ranem": "3edf8397661c",
    "quick/imagenette/vit/nemt": "556ff339ad99",
    "quick/imagenette/vit/ranem_insdel": "eb5a9d3f331e",
    "quick/synthetic/cnn/ranem": "206f24203685",
    "quick/synthetic/cnn/nemt": "db0a0368436d",
    "quick/synthetic/cnn/ranem_insdel": "40ec56040130",
    "quick/synthetic/vit/ranem": "29d3886a28b4",
    "quick/synthetic/vit/nemt": "70c88ab70af0",
    "quick/synthetic/vit/ranem_insdel": "a2d49093a829",
    "cpu/imagenette/cnn/ranem": "3655329ea21b",
    "cpu/imagenette/cnn/nemt": "04d3512d5bdb",
    "cpu/imagenette/cnn/ranem_insdel": "e6b02c9e89d2",
    "cpu/imagenette/vit/ranem": "e3f2c76e839d",
    "cpu/imagenette/vit/nemt": "f3c7d4043560",
    "cpu/imagenette/vit/ranem_insdel": "fa3450d470f5",
    "cpu/synthetic/cnn/ranem": "5832f41e0421",
    "cpu/synthetic/cnn/nemt": "e5c23ef45071",
    "cpu/synthetic/cnn/ranem_insdel": "baa896f7fabf",
    "cpu/synthetic/vit/ranem": "f2a47868d565",
    "cpu/synthetic/vit/nemt": "d423a511636e",
    "cpu/synthetic/vit/ranem_insdel": "4ae146b355ed",
    "gpu/imagenette/cnn/ranem": "a035ae7d12f0",
    "gpu/imagenette/cnn/nemt": "d86e39cd0c79",
    "gpu/imagenette/cnn/ranem_insdel": "59eeb6317acc",
    "gpu/imagenette/vit/ranem": "d84cf343236e",
    "gpu/imagenette/vit/nemt": "885f32771027",
    "gpu/imagenette/vit/ranem_insdel": "4ba75d764cef",
    "gpu/synthetic/cnn/ranem": "8763928e0e6b",
    "gpu/synthetic/cnn/nemt": "7626223d4416",
    "gpu/synthetic/cnn/ranem_insdel": "ea6ce49c4ff1",
    "gpu/synthetic/vit/ranem": "f5793a34bc81",
    "gpu/synthetic/vit/nemt": "ab89fbfe5251",
    "gpu/synthetic/vit/ranem_insdel": "c77c81dd7bf9",
}


def nem_folder(kind, mode, dataset, classifier):
    """The folder name ``get_nem`` gives the NEM of ``kind`` for the classifier of ``classifier``."""
    s = config.settings(mode)
    spec = classifier_spec(classifier, dataset, s)
    key = cache_key(spec)
    return nem_key(key, kind, nem_spec(kind, key, dataset, s, image_size=spec["image_size"]))


@pytest.mark.parametrize("mode,dataset,kind", CASES)
def test_classifier_cache_keys_are_pinned(mode, dataset, kind):
    spec = classifier_spec(kind, dataset, config.settings(mode))
    assert cache_key(spec) == CLASSIFIER_KEYS[f"{mode}/{dataset}/{kind}"]


@pytest.mark.parametrize("nem", NEM_KINDS)
@pytest.mark.parametrize("mode,dataset,kind", CASES)
def test_nem_cache_folders_are_pinned(mode, dataset, kind, nem):
    case = f"{mode}/{dataset}/{kind}"
    expected = f"{CLASSIFIER_KEYS[case]}-{nem}-{NEM_DIGESTS[f'{case}/{nem}']}"
    assert nem_folder(nem, mode, dataset, kind) == expected
