"""The modelling code of a `megaseqpe-export --format hf` folder for every position type but a stock
GPT-2's: copied as they are next to the flattened megaseqpe modules (see ../sources.py), and only
imported from there, by `transformers`' remote-code loader."""
