"""Run in the vLLM environment (tools/vllm_env.sh) by tests/test_vllm_plugin.py: greedy answers of an MF-RSVLM folder
through ``vllm.LLM`` with the rsfuse plugin (found through its entry point), written to a JSON file.

``python answer.py FOLDER REQUESTS.json OUT.json``. REQUESTS: ``{"max_tokens": int, "engine": {extra LLM
arguments}, "prompts": [{"prompt": text, "image": path or null}], "chats": [[OpenAI messages]], "checks": [{extra
engine arguments}]}``. OUT: ``{"prompts": [{"token_ids", "text", "prompt_token_ids"}], "chats": [same],
"checks": [{"error": one line or null, "disable_chunked_mm_input", "enable_prefix_caching"}]}``. Each check builds
only vLLM's engine config for the folder (where the plugin's engine settings run) and records what it said.
"""

import json
import sys

from PIL import Image


def _result(result) -> dict:
    return {"token_ids": list(result.outputs[0].token_ids), "text": result.outputs[0].text,
            "prompt_token_ids": list(result.prompt_token_ids)}


def _check(folder: str, engine: dict) -> dict:
    from vllm.engine.arg_utils import EngineArgs

    try:
        config = EngineArgs(model=folder, tokenizer_mode="rsfuse", dtype="float32", enforce_eager=True,
                            max_model_len=256, **engine).create_engine_config()
    except Exception as error:  # noqa: BLE001 - the test reads the message
        return {"error": f"{type(error).__name__}: {error}"}
    return {"error": None, "disable_chunked_mm_input": config.scheduler_config.disable_chunked_mm_input,
            "enable_prefix_caching": config.cache_config.enable_prefix_caching}


def main() -> None:
    folder, requests_path, out_path = sys.argv[1:4]
    from vllm import LLM, SamplingParams

    requests = json.loads(open(requests_path).read())
    out = {"prompts": [], "chats": [], "checks": [_check(folder, engine) for engine in requests.get("checks", [])]}
    prompts = []
    for item in requests.get("prompts", []):
        prompt = {"prompt": item["prompt"]}
        if item.get("image"):
            prompt["multi_modal_data"] = {"image": Image.open(item["image"]).convert("RGB")}
        prompts.append(prompt)
    chats = requests.get("chats", [])
    if prompts or chats:
        llm = LLM(model=folder, tokenizer_mode="rsfuse", dtype="float32", enforce_eager=True, max_model_len=256,
                  max_num_seqs=8, seed=0, gpu_memory_utilization=0.1, **requests.get("engine", {}))
        params = SamplingParams(temperature=0.0, max_tokens=requests["max_tokens"])
        if prompts:
            out["prompts"] = [_result(result) for result in llm.generate(prompts, params)]
        if chats:
            out["chats"] = [_result(result) for result in llm.chat(chats, params)]
    open(out_path, "w").write(json.dumps(out))


if __name__ == "__main__":
    main()
