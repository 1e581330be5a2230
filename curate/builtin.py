"""Built-in stages that need no optional dependency."""

from __future__ import annotations

from curate.stage import BatchResult, Stage, StageConfig


class PassthroughConfig(StageConfig):
    pass


class PassthroughStage(Stage[PassthroughConfig]):
    """Copies its input unchanged: measures the runner's own cost and checks resume."""

    name = "passthrough"
    config_model = PassthroughConfig
    description = "Copy the input unchanged (measures the runner itself)."
    example = "curate passthrough runs/demo"
    cli = ("passthrough",)
    batch_rows = 65536

    def process(self, batch):
        return BatchResult(batch)
