"""A batched stage returns the same pixels as the unbatched pipeline on the same inputs."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from ray import serve

from pipeline.colorizer import Colorizer
from pipeline.models.loading import ModelSpec, load_model
from tests.helpers import photo

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("deployment,model", [("ColorizerTiny", "tiny"), ("ColorizerLarge", "large")])
def test_batched_equals_unbatched(service, deployment, model):
    handle = serve.get_deployment_handle(deployment, app_name="colorize")
    images = [photo(64 + 8 * i, 48 + 4 * i, seed=i) for i in range(8)]

    async def send_all():
        return await asyncio.gather(*(handle.remote(image) for image in images))

    batched = asyncio.run(send_all())
    architecture = "ddcolor" if model == "tiny" else "siggraph17"
    reference = Colorizer(load_model(ModelSpec(architecture, service["models"] / model)))
    for image, result in zip(images, batched):
        assert result.shape == image.shape and result.dtype == np.uint8
        np.testing.assert_array_equal(result, reference.colorize(image))
    sizes = handle.status.remote().result()["batch_sizes"]
    assert max(int(size) for size in sizes) > 1, f"no batch formed: {sizes}"
