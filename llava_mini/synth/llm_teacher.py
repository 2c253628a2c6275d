"""The LLM teacher: LLaVA-Instruct-style data written by a language model from the symbolic form of an image.

Same interface as teacher.RuleTeacher (`conversation`, `detail`, `complex`, each returning LLaVA turns or None), so the
data builders in teacher.py take either. Any OpenAI-compatible endpoint (llm_client.ChatClient) gets a paper-style
system prompt and one few-shot example per kind; the reply must be a JSON list of turns that alternate human/gpt
(the paper's format; `reply_format="lines"` asks for "Q:" / "A:" lines instead, which a small model can copy);
anything else is counted as a rejection (`teacher.rejected`, with the reasons in `teacher.reasons`). With `check`
(synth/fact_check.py's `fact_check`), a well-formed sample that states something false of the scene is rejected too.

    from llava_mini.synth.llm_client import ChatClient
    teacher = LLMTeacher(ChatClient("http://127.0.0.1:8000/v1", "my-model"))
    turns = teacher.detail({"captions": [...], "boxes": ["red circle: [0.10, 0.20, 0.35, 0.45]"]})
"""
from __future__ import annotations

import json
from collections import Counter

SYSTEM_PROMPT = """You are an AI assistant that can see one image, described to you only in text: a few sentences that \
each describe the whole image, and a list of objects with bounding boxes written name: [x1, y1, x2, y2], where the \
numbers are fractions of the image width and height (0 is the left or top edge, 1 the right or bottom edge). \
Answer as if you were looking at the image yourself: never mention the captions, the boxes or the coordinates \
as text you were given. Only state what the description supports; do not invent objects or details.

{task}

{reply_format}"""

# How the reply is written. "json" is the paper's (a list of turns); "lines" is one a small model can copy: a
# question on a "Q:" line, its answer on the next "A:" line (SmolLM2-135M breaks the JSON: docs/EXPERIMENTS.md).
REPLY_FORMATS = {
    "json": 'Reply with JSON only: a list of turns [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, '
            '...] that starts with "human", alternates, and ends with "gpt".',
    "lines": 'Reply with lines only: each question on a line that starts with "Q: ", and its answer on the next line, '
             'which starts with "A: ".',
}

TASKS = {
    "conversation": "Write a conversation between a person asking about the image and you answering. Ask varied "
                    "questions (what the objects are, how many, their colours, where they are, where they are "
                    "relative to each other, and a question whose answer is no). Use 3 to 5 question-answer pairs.",
    "detail": "The person asks for a detailed description of the image. Write one request and one answer: a rich, "
              "complete paragraph describing every object, its appearance and where it is.",
    "complex": "Ask one question that needs reasoning beyond what is directly visible (counting after a change, "
               "comparing sizes or distances, what would happen if ...), and answer it step by step.",
}

FEW_SHOT_CONTEXT = {"captions": ["A large red circle and a small blue square on a pale background.",
                                 "Two shapes: a red circle and a blue square."],
                    "boxes": ["red circle: [0.05, 0.10, 0.40, 0.45]", "blue square: [0.60, 0.62, 0.82, 0.84]"]}
FEW_SHOT_REPLIES = {
    "conversation": [["What shapes are in the image?", "There are two shapes: a red circle and a blue square."],
                     ["Where is the circle?", "The red circle is in the top left part of the image."],
                     ["Is there a green triangle?", "No, there is no green triangle in the image."]],
    "detail": [["Describe the image in detail.",
                "The image shows two simple shapes on a plain pale background. A large red circle fills much of the "
                "top left area, and a smaller blue square sits in the bottom right, well apart from the circle."]],
    "complex": [["Which shape is closer to the bottom right corner, and why?",
                 "The bottom right corner is at (1, 1). The blue square is centred near (0.71, 0.73), about 0.4 "
                 "away, while the red circle is centred near (0.23, 0.28), about 1.1 away. So the blue square is "
                 "closer to the bottom right corner."]],
}


def format_context(context: dict) -> str:
    return "Captions:\n" + "\n".join(context["captions"]) + "\n\nObjects:\n" + "\n".join(context["boxes"])


def check_turns(reply: str) -> list[dict] | None:
    """The reply as a validated list of turns, or None: JSON list, alternating human/gpt, non-empty strings."""
    text = reply.strip()
    if text.startswith("```"):  # many models wrap JSON in a code fence
        text = text.strip("`").removeprefix("json").strip()
    try:
        turns = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
        return None
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or t.get("from") != ("human", "gpt")[i % 2] \
                or not isinstance(t.get("value"), str) or not t["value"].strip():
            return None
    return [{"from": t["from"], "value": t["value"].strip()} for t in turns]


def check_lines(reply: str) -> list[dict] | None:
    """A "lines" reply as turns, or None: "Q: ..." and "A: ..." lines in turn (other lines are skipped; a last
    question without its answer is dropped, as a reply cut off by the token limit ends)."""
    turns = []
    for line in reply.splitlines():
        line = line.strip()
        for prefix, role in (("Q:", "human"), ("A:", "gpt")):
            if line.startswith(prefix) and line[len(prefix):].strip():
                if (role == "human") != (len(turns) % 2 == 0):
                    return None                           # two questions or two answers in a row
                turns.append({"from": role, "value": line[len(prefix):].strip()})
    turns = turns[:len(turns) // 2 * 2]
    return turns or None


def render_turns(turns: list[dict], reply_format: str) -> str:
    """The few-shot example's reply, written the way the model is asked to reply."""
    if reply_format == "json":
        return json.dumps(turns)
    return "\n".join(("Q: " if t["from"] == "human" else "A: ") + t["value"] for t in turns)


class LLMTeacher:
    """The same interface as RuleTeacher, written by a language model from the same symbolic context."""

    def __init__(self, client, temperature: float = 0.0, check=None, reply_format: str = "json"):
        if reply_format not in REPLY_FORMATS:
            raise ValueError(f"reply_format must be one of {', '.join(REPLY_FORMATS)}, got {reply_format!r}")
        self.client = client  # llm_client.ChatClient or anything with .chat(messages, temperature) -> str
        self.temperature = temperature
        self.reply_format = reply_format
        # check(turns, context) -> None if the sample may be kept, else why not (synth/fact_check.py checks facts)
        self.check = check
        self.rejected = Counter()  # rejected replies, per kind
        self.reasons = Counter()   # ... and why ("false claim (position)")
        self.examples = {}         # reason -> (kind, reply, the whole why): the first reply rejected for it

    def _reject(self, kind: str, reason: str, reply: str, why: str | None = None) -> None:
        """reason: what the report counts ("false claim (position)"); why: the whole story, when longer."""
        self.rejected[kind] += 1
        self.reasons[reason] += 1
        self.examples.setdefault(reason, (kind, reply, why or reason))

    def _ask(self, kind: str, context: dict) -> list[dict] | None:
        shot = [t for q, a in FEW_SHOT_REPLIES[kind] for t in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
        system = SYSTEM_PROMPT.format(task=TASKS[kind], reply_format=REPLY_FORMATS[self.reply_format])
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": format_context(FEW_SHOT_CONTEXT)},
                    {"role": "assistant", "content": render_turns(shot, self.reply_format)},
                    {"role": "user", "content": format_context(context)}]
        reply = self.client.chat(messages, temperature=self.temperature)
        turns = check_turns(reply) if self.reply_format == "json" else check_lines(reply)
        if turns is None:
            self._reject(kind, "not a JSON list of alternating human/gpt turns" if self.reply_format == "json"
                         else "no Q:/A: lines in turn", reply)
            return None
        why = self.check(turns, context) if self.check else None
        if why:
            self._reject(kind, why.partition(": ")[0], reply, why)      # "false claim (count): 3 x object"
            return None
        turns[0]["value"] = "<image>\n" + turns[0]["value"].replace("<image>", "").strip()
        return turns

    def conversation(self, context, rng=None):
        return self._ask("conversation", context)

    def detail(self, context, rng=None):
        return self._ask("detail", context)

    def complex(self, context, rng=None):
        return self._ask("complex", context)
