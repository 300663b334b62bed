"""Exports like PEFT adapters: the on-disk format (``format``), writing one (``save``), reading it back and
predicting (``load``, :func:`autoside.load`), picking a trial of a search (``pick``) and the MLflow pyfunc
(``mlflow_model``)."""
