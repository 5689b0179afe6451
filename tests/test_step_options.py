"""Step options: the fast settings train the same weights as the bundle's; bf16 without loss scaling."""

from __future__ import annotations

import copy
import types
import warnings

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.handlers import StatsHandler, from_engine

from supremix_med.engines import NoLossScaling, loss_from_output, pretraining_setup
from supremix_med.networks import build_model

LOSS = {"supremix": {"temperature": 0.5, "window": 2.0, "label_range": [0.0, 4.0]}}


def _batches(n: int = 3, b: int = 6) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [{"image": torch.randn(b, 5, generator=generator), "image_1": torch.randn(b, 5, generator=generator),
             "label": torch.randint(0, 4, (b, 1), generator=generator).float()} for _ in range(n)]


def _train(model, fast: bool, fused: bool = False) -> dict[str, torch.Tensor]:
    """Three pre-training steps as the bundle runs them (``fast=False``) or with the fast step options."""
    setup = pretraining_setup("supremix", model, LOSS, ("image", "image_1"))
    optimizer = torch.optim.Adam(setup.network.parameters(), 1e-2, **({"fused": True} if fused else {}))
    output = loss_from_output if fast else from_engine(["loss"], first=True)
    handler = StatsHandler(name="test.step_options", tag_name="loss", output_transform=output, epoch_log=False,
                           iteration_log=(lambda _, i: i % 2 == 0) if fast else True)
    trainer = SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=_batches(), network=setup.network,
                                optimizer=optimizer, loss_function=setup.loss_function,
                                prepare_batch=setup.prepare_batch, decollate=not fast, optim_set_to_none=fast,
                                train_handlers=[handler])
    torch.manual_seed(0)  # SupReMix draws its Mix-neg coefficients
    trainer.run()
    assert torch.isfinite(torch.as_tensor(loss_from_output(trainer.state.output)))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fast_step_options_train_exactly_the_same_weights():
    """decollate=False, optim_set_to_none=True and sparse loss logging change the time of a step, not its result."""
    torch.manual_seed(0)
    model = build_model("mlp", in_features=5, projection_dim=8)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    bundle = _train(copy.deepcopy(model), fast=False)
    fast = _train(copy.deepcopy(model), fast=True)
    assert any(not torch.equal(bundle[k], start[k]) for k in start)
    assert all(torch.equal(bundle[k], fast[k]) for k in bundle)
    fused = _train(copy.deepcopy(model), fast=True, fused=True)  # equal up to float rounding
    assert all(torch.allclose(bundle[k], fused[k], rtol=1e-5, atol=1e-6) for k in bundle)


def test_loss_from_output_reads_decollated_and_plain_outputs():
    loss = torch.tensor(1.5)
    assert loss_from_output({"loss": loss, "pred": torch.zeros(2)}) is loss
    assert loss_from_output([{"loss": 1.5, "pred": 0.0}, {"loss": 1.5, "pred": 1.0}]) == 1.5


def test_no_loss_scaling_needs_bfloat16_and_disables_the_scaler():
    model = build_model("mlp", in_features=5, projection_dim=8)
    setup = pretraining_setup("supremix", model, LOSS, ("image", "image_1"))

    def trainer(amp_kwargs):
        return SupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=_batches(1), network=setup.network,
                                 optimizer=torch.optim.Adam(setup.network.parameters()), amp=True,
                                 amp_kwargs=amp_kwargs, loss_function=setup.loss_function,
                                 prepare_batch=setup.prepare_batch)

    with pytest.raises(ValueError, match="bfloat16"):
        NoLossScaling().attach(trainer(None))
    with pytest.raises(ValueError, match="bfloat16"):
        NoLossScaling().attach(trainer({"dtype": torch.float16}))
    engine = trainer({"dtype": torch.bfloat16})
    NoLossScaling().attach(engine)
    with warnings.catch_warnings():  # without CUDA, MONAI's CUDA autocast and scaler warn that they are off
        warnings.simplefilter("ignore")
        engine.run()
    assert isinstance(engine.scaler, torch.amp.GradScaler) and not engine.scaler.is_enabled()
    fake = types.SimpleNamespace(scaler=object())
    NoLossScaling()(fake)
    assert isinstance(fake.scaler, torch.amp.GradScaler) and not fake.scaler.is_enabled()
