"""The search: YAML space -> Optuna (``space``), Ray's OptunaSearch extended (``sampler``), the Tuner and resume
(``driver``), one trial on a worker (``trial``), MLflow (``tracking``), Pareto maths (``pareto``), reading a finished
search (``results``) and the public :func:`autoside.search` (``api``)."""
