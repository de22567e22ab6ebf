"""The data path: files and built-in data sets, datasets over image folders and shards, training batches."""
