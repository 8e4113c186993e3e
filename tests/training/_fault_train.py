"""`python -m megatron_moe.train` with a fault: rank FAULT_RANK dies (os._exit(9), like a lost node) at the start
of optimizer step FAULT_STEP, in the first attempt only (TORCHELASTIC_RESTART_COUNT == 0). For restart tests."""
import os
import sys

from megatron_moe.training.trainer import Trainer

_step = Trainer.train_step


def _train_step(self):
    if (os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and self.ps.rank == int(os.environ["FAULT_RANK"])
            and self.step + 1 == int(os.environ["FAULT_STEP"])):
        open(os.environ["FAULT_MARKER"], "w").close()  # the test checks that the fault did happen
        os._exit(9)
    return _step(self)


Trainer.train_step = _train_step

if __name__ == "__main__":
    from megatron_moe.train import main

    main(sys.argv[1:])
