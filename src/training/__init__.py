"""The LightningModule and its parts (distillation, mixing, EMA, non-finite guard, freezing, schedulers), and
the Trainer and logger builders."""
