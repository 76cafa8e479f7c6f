# OpenPipe's SDK, unchanged, against rewardgate: only OPENPIPE_BASE_URL=http://<gateway>/api/v1 and OPENPIPE_API_KEY.
import os
import time

import httpx
from openpipe import OpenAI, OpenPipe

op = OpenPipe()
pairs = [{"messages": [{"role": "user", "content": f"Count to {n}"},
                       {"role": "assistant", "content": ", ".join(str(i) for i in range(1, n + 1))}],
          "rejected_message": {"role": "assistant", "content": "I'd rather not count."}} for n in range(3, 40)]
dataset = op.create_dataset(name="counting pairs")
op.create_dataset_entries(dataset.id, entries=pairs)
op.create_model(dataset_id=dataset.id, slug="counting-rm", training_config={
    "provider": "openpipeReward", "baseModel": "minilm", "hyperparameters": {"num_epochs": 1}})
while (model := op.get_model(model_slug="counting-rm")).openpipe.status not in ("DEPLOYED", "ERROR"):
    time.sleep(2)
assert model.openpipe.status == "DEPLOYED", model.openpipe.error_message
completion = OpenAI().chat.completions.create(
    model="openai:gpt-4o-mini", messages=[{"role": "user", "content": "Count to 10"}], n=5,
    openpipe={"criteria": ["counting-rm"], "tags": {"prompt_id": "counting"}})
for choice in completion.choices:  # best first
    print(round(choice.criteria_results["counting-rm"]["score"], 3), choice.message.content[:60])
judged = op.get_criterion_judgement(criterion_id="counting-rm", output={"role": "assistant", "content": "1, 2, 3"},
                                    input={"messages": [{"role": "user", "content": "Count to 3"}]})
print("judged:", judged.score)
gateway, key = os.environ["OPENPIPE_BASE_URL"].removesuffix("/api/v1"), os.environ["OPENPIPE_API_KEY"]
log = httpx.get(f"{gateway}/v1/logs/{completion.rewardgate['log_id']}", headers={"Authorization": f"Bearer {key}"})
print("stored:", log.json()["metadata"], [c["score"] for c in log.json()["candidates"]])
