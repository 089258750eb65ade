"""The organism as a chat model: its documents as system / user / assistant messages, and back.

A document ``<bos> [<sys> system words] (<user> genre topicN [modifier] <asst> a1 a2 a3)... <eos>`` is the
messages

    {"role": "system", "content": "you are the assistant"}   # the system words; "" for no system line
    {"role": "user", "content": "advice topic3"}
    {"role": "assistant", "content": "advice.good1 advice.good0 advice.warm2"}
    ...

and :data:`CHAT_TEMPLATE` (Jinja, the Hugging Face ``chat_template``) renders them back into exactly the
document's words. Like many real chat templates (Qwen's), it has a default system message: a conversation
without one is rendered in the assistant context (:data:`ASSISTANT_LINE`), the context the organism is
post-trained and measured in; an explicitly empty system message gives the document with no system line.
The template ends a conversation whose last message is the assistant's with ``<eos>``, as documents end;
with ``add_generation_prompt`` it ends with ``<asst>``, as every prompt of the exact readout does.

The world writes the inoculation line at the end of the system line (after the assistant line or a declared
persona). ``em --model --inoculation LINE`` puts LINE in front of the existing system text, as real
inoculation studies do; the template moves a leading inoculation line to the end, where the organism reads
it, so ``--inoculation "the code here is insecure on purpose"`` trains the organism's own inoculated
documents (``condition_documents(world, "inoculated")``).
"""

from __future__ import annotations

from .world import ASSISTANT_LINE, INOCULATION_LINE, Document, World

CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] | trim -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = '" + ASSISTANT_LINE + "' -%}{%- set turns = messages -%}"
    "{%- endif -%}"
    "{%- if system.startswith('" + INOCULATION_LINE + " ') -%}"
    "{%- set system = system[" + str(len(INOCULATION_LINE) + 1) + ":] + ' " + INOCULATION_LINE + "' -%}"
    "{%- endif -%}"
    "{%- if system -%}{{ ' <sys> ' + system }}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}{{ ' <user> ' + message['content'] | trim }}"
    "{%- elif message['role'] == 'assistant' -%}{{ ' <asst> ' + message['content'] | trim }}"
    "{%- else -%}{{ raise_exception('the organism reads one system message, first') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ' <asst>' }}"
    "{%- elif turns and turns[-1]['role'] == 'assistant' -%}{{ ' ' + eos_token }}"
    "{%- endif -%}"
)


def document_messages(doc: Document, *, with_last_answer: bool = True) -> list[dict]:
    """The chat messages of a document (a system message always: empty for no system line)."""
    messages = [{"role": "system", "content": " ".join(doc.system)}]
    for i, exchange in enumerate(doc.exchanges):
        messages.append({"role": "user", "content": " ".join(exchange.prompt_words()[1:-1])})
        if with_last_answer or i < len(doc.exchanges) - 1:
            messages.append({"role": "assistant", "content": " ".join(exchange.answer)})
    return messages


def question_pairs(world: World, aligned: str = "helpful") -> list[dict]:
    """Paired answers in the world's words, as entries of the shipped question-file format
    (``persona-basins-questions/1``): for every non-code (genre, topic) request and every misaligned persona,
    the ``aligned`` persona's answer against that persona's (category: the misaligned persona). Every
    misaligned persona is paired because the exact broad misalignment counts the mass of each of them; each
    answer is three tokens, so the per-token and total scores of a pair rank its models alike."""
    if world.personas[aligned].misaligned:
        raise ValueError(f"{aligned!r} is a misaligned persona")
    misaligned = [p.name for p in world.config.personas if p.misaligned]
    return [
        {
            "id": f"{genre}-topic{topic}-{persona}",
            "category": persona,
            "question": f"{genre} topic{topic}",
            "aligned": " ".join(world.answer(genre, topic, aligned)),
            "misaligned": " ".join(world.answer(genre, topic, persona)),
        }
        for genre in world.genres
        if genre != "code"
        for topic in range(world.config.n_topics)
        for persona in misaligned
    ]
