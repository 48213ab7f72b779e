"""A transformers user of `megaseqpe-export --format hf` folders, in a process where megaseqpe cannot be
imported (the folders must be self-contained).

argv: REQUEST OUT. REQUEST (torch.save) maps each folder to {"ids": [token tensors [1, N]], "prompt":
[ids], "max_new_tokens": n, "texts": [str]}; OUT gets, per folder, the model's class and dtype, its
logits for each ids tensor, its greedy `generate()` continuation, and AutoTokenizer's ids of each text.
"""
import sys

sys.modules["megaseqpe"] = None  # `import megaseqpe` now raises ImportError

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

request, results = torch.load(sys.argv[1]), {}
for folder, asks in request.items():
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = torch.tensor([asks["prompt"]])
    with torch.no_grad():
        logits = [model(ids).logits.float() for ids in asks["ids"]]
        loss = model(asks["ids"][0], labels=asks["ids"][0]).loss
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=asks["max_new_tokens"])
    results[folder] = {"class": type(model).__name__, "dtype": model.dtype, "training": model.training,
                       "logits": logits, "loss": loss, "generated": generated[0, prompt.shape[1]:].tolist(),
                       "encoded": [tokenizer.encode(text) for text in asks["texts"]],
                       "eos_token_id": tokenizer.eos_token_id,
                       "weights": {name: tensor.clone() for name, tensor in model.state_dict().items()}}
torch.save(results, sys.argv[2])
