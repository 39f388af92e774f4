"""One table of data-set facts and one of model facts, known without torch: the loaders,
the models, the config check and the cost model read them here (tests/workflow/test_cost.py builds
every model and checks its D)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetFacts:
    """What the code needs to know of a data set before reading it."""

    input_shape: tuple[int, int, int]
    train_images: int  # after the validation split (rbd.train.data)
    # torchvision.datasets class that reads it; None: it ships inside a package (mnist5k).
    torchvision_class: str | None
    label: str  # as tables and figures name it (the paper's "FMNIST")


@dataclass(frozen=True)
class ModelFacts:
    """D per input shape ("CxHxW") and the cost model's seconds per 32-image SGD step."""

    num_params: dict[str, int]
    step_seconds: dict[str, float]


NUM_CLASSES = 10

DATASET_FACTS = {
    "mnist5k": DatasetFacts((1, 28, 28), 4_000, None, "MNIST5k"),
    "mnist": DatasetFacts((1, 28, 28), 50_000, "MNIST", "MNIST"),
    "fashion_mnist": DatasetFacts((1, 28, 28), 50_000, "FashionMNIST", "FMNIST"),
    "cifar10": DatasetFacts((3, 32, 32), 40_000, "CIFAR10", "CIFAR10"),
}

# step_seconds: measured for fc (2-3 s per MNIST epoch on a CPU); cnn and resnet8 scaled by
# their FLOPs; fc2x200 and lenet from steps measured at batch 128 (3.2 and 10.5 ms, Adam, one
# thread, Intel Xeon Sapphire Rapids, AVX-512), per 32 images, rounded up (rbd.workflow.cost).
MODEL_FACTS = {
    "fc": ModelFacts({"1x28x28": 101_770, "3x32x32": 394_634}, {"cpu": 2e-3, "cuda": 1e-3}),
    "cnn": ModelFacts({"1x28x28": 93_322, "3x32x32": 122_570}, {"cpu": 2e-2, "cuda": 2e-3}),
    "resnet8": ModelFacts({"1x28x28": 78_042, "3x32x32": 78_330}, {"cpu": 5e-2, "cuda": 5e-3}),
    "fc2x200": ModelFacts({"1x28x28": 199_210, "3x32x32": 656_810}, {"cpu": 1e-3, "cuda": 1e-3}),
    "lenet": ModelFacts({"1x28x28": 44_426, "3x32x32": 62_006}, {"cpu": 3e-3, "cuda": 2e-3}),
}


def input_key(dataset: str) -> str:
    """The input shape of ``dataset`` as "CxHxW", the key of ModelFacts.num_params."""
    return "x".join(str(n) for n in DATASET_FACTS[dataset].input_shape)


def num_params(model: str, dataset: str) -> int:
    """D of ``model`` on ``dataset``, known without building it."""
    return MODEL_FACTS[model].num_params[input_key(dataset)]
