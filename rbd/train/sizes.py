"""D, the parameters of each model on each data set, known without building the model:
config validation and the cost model read it torch-free (tests/test_cost.py checks every
entry against the built models)."""

NUM_PARAMS = {
    ("fc", "1x28x28"): 101_770,
    ("fc", "3x32x32"): 394_634,
    ("cnn", "1x28x28"): 93_322,
    ("cnn", "3x32x32"): 122_570,
    ("resnet8", "1x28x28"): 78_042,
    ("resnet8", "3x32x32"): 78_330,
}
INPUT = {"mnist5k": "1x28x28", "mnist": "1x28x28", "fashion_mnist": "1x28x28", "cifar10": "3x32x32"}


def num_params(model: str, dataset: str) -> int:
    return NUM_PARAMS[(model, INPUT[dataset])]
