"""The search: YAML space -> Optuna (``space``), Ray's OptunaSearch extended (``sampler``), the Tuner and resume
(``driver``), one trial on a worker (``trial``), MLflow (``tracking``; ``journal``: writes that wait out an outage;
``outbox``: the driver's search folder and its unsent writes), proof of a shared folder (``shared``), Pareto maths
(``pareto``), reading a finished search (``results``) and the public :func:`autoside.search` (``api``)."""
