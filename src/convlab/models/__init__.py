"""Model families; each is built from conf/model/<name>.yaml via its `_target_`."""
