"""``ns-train`` as one data-parallel process of tests/recon/test_distributed.py (torchrun runs this file).

Test-only switches, read from the environment:

- ``RECON_TEST_RANK_CWD``: work in ``<that folder>/rank<RANK>`` (created), so that a file a rank other
  than 0 writes under a relative ``--output-dir`` shows up in its own folder;
- ``RECON_TEST_NO_JITTER``: proposal sampling without its random jitter, so that a run on several
  processes can be compared with one process up to float summation order (the jitter of rank r's
  rays would otherwise be other numbers than the 1-process run draws for the same rays);
- ``RECON_TEST_REPORT``: a folder where each rank writes ``rank<RANK>.json`` after training (or
  after an interruption): the loss history, the number of parameters and a hash of the model;
- ``RECON_TEST_STOP``: ``RANK:STEP``: that rank alone asks to stop (as Ctrl-C does) after STEP + 1
  steps; every rank must stop at the same step.
- ``RECON_TEST_WRITE_FAIL``: ``STEP``: rank 0's checkpoint write of that step fails as on a full
  disk; every rank must stop (not wait for rank 0 forever).
"""

from __future__ import annotations

import os
import sys


def without_jitter(forward):
    """``ProposalSampler.forward`` that never perturbs its samples."""

    def deterministic(self, *args, **kwargs):
        kwargs["perturb"] = False
        return forward(self, *args, **kwargs)

    return deterministic


def no_jitter() -> None:
    """Proposal samplers draw no jitter (what ``RECON_TEST_NO_JITTER`` does)."""
    from recon.render.proposal import ProposalSampler

    ProposalSampler.forward = without_jitter(ProposalSampler.forward)


def instrument() -> None:
    """Hook ``Trainer.train`` for ``RECON_TEST_REPORT`` and ``RECON_TEST_STOP``."""
    import hashlib
    import json

    import torch

    from recon.engine.callbacks import Callback
    from recon.engine.trainer import Trainer

    train = Trainer.train
    rank = os.environ.get("RANK", "0")

    fail_at = os.environ.get("RECON_TEST_WRITE_FAIL")
    if fail_at and rank == "0":
        from recon.errors import WriteError

        save = Trainer._save_checkpoint

        def failing(self, step):
            if step == int(fail_at):
                raise WriteError("cannot write this file: no space left on device (test)", "step.safetensors")
            return save(self, step)

        Trainer._save_checkpoint = failing

    def instrumented(self):
        stop = os.environ.get("RECON_TEST_STOP", "")
        if stop and stop.split(":")[0] == rank:
            self.callbacks.append(Callback(lambda s, **_: self.request_stop(), start=int(stop.split(":")[1]), every=10**9))
        try:
            return train(self)
        finally:
            if os.environ.get("RECON_TEST_REPORT"):
                state = self.model.state_dict()
                digest = hashlib.sha256(b"".join(state[k].detach().cpu().contiguous().numpy().tobytes() for k in sorted(state)))
                report = {"history": self.history, "step": self.step, "num_params": sum(p.numel() for p in self.model.parameters()),
                          "hash": digest.hexdigest(), "torch_rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()}
                with open(os.path.join(os.environ["RECON_TEST_REPORT"], f"rank{rank}.json"), "w") as f:
                    json.dump(report, f)

    Trainer.train = instrumented


if __name__ == "__main__":
    if os.environ.get("RECON_TEST_RANK_CWD"):
        folder = os.path.join(os.environ["RECON_TEST_RANK_CWD"], f"rank{os.environ.get('RANK', '0')}")
        os.makedirs(folder, exist_ok=True)
        os.chdir(folder)
    if os.environ.get("RECON_TEST_NO_JITTER"):
        no_jitter()
    instrument()
    from recon.cli import run_main
    from recon.cli.train import main

    run_main(lambda: main(sys.argv[1:]))
