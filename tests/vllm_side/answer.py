"""Run in the vLLM environment (tools/vllm_env.sh) by tests/test_vllm_plugin.py: greedy answers of an MF-RSVLM folder
through ``vllm.LLM`` with the rsfuse plugin, for the prompts of a JSON file, written to another JSON file.

``python answer.py FOLDER REQUESTS.json OUT.json``: REQUESTS holds ``{"max_tokens": int, "prompts": [{"prompt": text,
"image": path or null}], "chats": [{"messages": [...OpenAI messages, image parts as data URLs...]}]}``; OUT gets
``{"prompts": [{"token_ids", "text"}], "chats": [...], "prompt_token_ids": [...]}``."""

import json
import sys

from PIL import Image


def main() -> None:
    folder, requests_path, out_path = sys.argv[1:4]
    from vllm import LLM, SamplingParams

    requests = json.loads(open(requests_path).read())
    llm = LLM(model=folder, tokenizer_mode="rsfuse", dtype="float32", enforce_eager=True, max_model_len=256,
              max_num_seqs=8, seed=0, gpu_memory_utilization=0.1)
    params = SamplingParams(temperature=0.0, max_tokens=requests["max_tokens"])
    prompts = []
    for item in requests.get("prompts", []):
        prompt = {"prompt": item["prompt"]}
        if item.get("image"):
            prompt["multi_modal_data"] = {"image": Image.open(item["image"]).convert("RGB")}
        prompts.append(prompt)
    out = {"prompts": [], "chats": [], "prompt_token_ids": []}
    if prompts:
        for result in llm.generate(prompts, params):
            out["prompts"].append({"token_ids": list(result.outputs[0].token_ids), "text": result.outputs[0].text})
            out["prompt_token_ids"].append(list(result.prompt_token_ids))
    chats = [chat["messages"] for chat in requests.get("chats", [])]
    if chats:
        for result in llm.chat(chats, params):
            out["chats"].append({"token_ids": list(result.outputs[0].token_ids), "text": result.outputs[0].text,
                                 "prompt_token_ids": list(result.prompt_token_ids)})
    open(out_path, "w").write(json.dumps(out))


if __name__ == "__main__":
    main()
