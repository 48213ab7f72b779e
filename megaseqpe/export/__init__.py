"""`megaseqpe-export`: a trained text run's model as safetensors (native: weights, config, tokenizer;
`native.load_native` reads it back) or as a folder that Hugging Face `transformers` loads (`hf`)."""
