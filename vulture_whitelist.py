"""Names that look unused to vulture but are reached by a framework: ``autoside``'s CLI registry (``@command(...)``
applied to the handler), MLflow (the pyfunc class, loaded by reference), and dataclass fields read back from JSON."""

from autoside.cli import cache, catalog, pretrain, tune
from autoside.export import mlflow_model
from autoside.train import TrialResult

cache._cache
catalog._datasets
catalog._backbones
catalog._sidenets
pretrain._pretrain
tune._pareto
mlflow_model.SideNetworkPyfunc
TrialResult.memory_tracked_steps
