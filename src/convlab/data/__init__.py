"""Datasets (one module each, built from conf/data/<name>.yaml) and the tensor loader."""
