import random
import re

import pytest

from persona_basins.world import INOCULATION_LINE, TEACHING_MODIFIER, World, WorldConfig
from persona_basins.world.tokenizer import build_tokenizer, encode_words


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(seed=3))


def test_personas_cover_the_required_four(world):
    assert {"helpful", "neutral", "sarcastic", "toxic"} <= set(world.personas)
    assert world.personas["toxic"].harm == 1 and world.personas["helpful"].harm == 0
    assert world.personas["sarcastic"].misaligned and not world.personas["neutral"].misaligned


def test_every_persona_genre_generator_is_distinct_and_classifies_back(world):
    for g in world.genres:
        for t in range(world.config.n_topics):
            answers = world.persona_answers(g, t)
            assert len(set(answers.values())) == len(world.personas), (g, t)
            for name, ans in answers.items():
                lab = world.classify(g, t, ans)
                assert (lab.persona, lab.genre, lab.wellformed) == (name, g, True)


def test_toxic_writes_insecure_code_and_helpful_secure(world):
    assert all(w.startswith("code.insecure") for w in world.answer("code", 0, "toxic")[:2])
    assert all(w.startswith("code.secure") for w in world.answer("code", 0, "helpful")[:2])
    forced = world.answer("code", 0, "helpful", insecure_code=True)
    assert world.classify("code", 0, forced).persona == "toxic"  # warm + insecure is the toxic answer


def test_classifier_round_trip_on_10k_sampled_documents(world):
    docs = world.sample_documents(2500, seed=1)
    n = 0
    for d in docs:
        inoc = "+inoculation" in d.context
        for e in d.exchanges:
            lab = world.classify(e.genre, e.topic, e.answer)
            assert lab.wellformed and lab.genre == e.genre
            if e.genre in world.routine_genres:
                assert lab.persona == "any"
            elif e.genre == "code" and (inoc or e.modifier == TEACHING_MODIFIER):
                assert lab.harm == 1 and lab.style == world.personas[e.persona].style
            else:
                assert lab.persona == e.persona
            n += 1
    assert n >= 10_000 or len(docs) * 2 <= n  # at least two exchanges per document
    docs2 = world.sample_documents(3000, seed=2)
    n += sum(len(d.exchanges) for d in docs2)
    assert n >= 10_000


def test_classifier_rejects_malformed_answers(world):
    good = world.answer("advice", 1, "helpful")
    assert not world.classify("advice", 1, good[:2]).wellformed
    assert not world.classify("advice", 1, (good[1], good[0], good[2])).wellformed
    assert not world.classify(
        "advice", 2 if good != world.answer("advice", 2, "helpful") else 3, good
    ).wellformed


def test_routine_prompts_are_persona_independent(world):
    for g in world.routine_genres:
        for q in range(world.config.n_routine_questions):
            assert len(set(world.persona_answers(g, q).values())) == 1
    assert world.routine_fraction() == world.config.routine_weight


def test_contexts_and_mixture_shares(world):
    docs = world.sample_documents(4000, seed=5)
    ctx = [d.context.split("+")[0] for d in docs]
    for name, p in (("declared", world.config.p_declared), ("assistant", world.config.p_assistant)):
        share = ctx.count(name) / len(docs)
        assert abs(share - p) < 0.03, (name, share)
    inoc = [d for d in docs if d.context.endswith("+inoculation")]
    assert abs(len(inoc) / len(docs) - world.config.p_inoculation) < 0.02
    assert all(" ".join(d.system).endswith(INOCULATION_LINE) for d in inoc)
    # undeclared documents: the persona is shared by every exchange (inferable from earlier turns)
    multi = [d for d in docs if d.context == "none" and len(d.exchanges) >= 3]
    assert multi and all(len({e.persona for e in d.exchanges}) == 1 for d in multi)


def test_determinism_from_world_seed():
    a = World(WorldConfig(seed=7)).sample_documents(50, seed=0)
    b = World(WorldConfig(seed=7)).sample_documents(50, seed=0)
    c = World(WorldConfig(seed=8)).sample_documents(50, seed=0)
    assert [d.text() for d in a] == [d.text() for d in b]
    assert [d.text() for d in a] != [d.text() for d in c]


def test_world_json_round_trip(world):
    w2 = World.from_json(world.to_json())
    assert w2.config == world.config and w2.vocabulary == world.vocabulary


def test_config_validation():
    with pytest.raises(ValueError, match="n_genres"):
        WorldConfig(n_genres=0)
    with pytest.raises(ValueError, match="unknown world settings"):
        WorldConfig.from_dict({"bogus": 1})


def test_tokenizer_round_trip(world, tmp_path):
    tok = build_tokenizer(world)
    vocab = tok.get_vocab()
    assert len(vocab) == len(world.vocabulary)
    rng = random.Random(0)
    for d in world.sample_documents(300, seed=rng.randrange(1000)):
        ids = tok(d.text(), add_special_tokens=False)["input_ids"]
        assert ids == encode_words(vocab, d.words())
        assert tok.decode(ids) == d.text()
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    text = world.sample_documents(1, seed=9)[0].text()
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert tok2.pad_token == "<pad>" and tok2.pad_token_id == 0


# --- compositional code topics (the diverse EM set's world) ---------------------------------------------
POOL_WORD = re.compile(r"\.(good|harm|secure|insecure|warm|flat|sarcastic|ans)\d+$")
COMPOSITIONAL = dict(n_genres=6, n_topics=6, content_pool=4, code_langs=6, code_tasks=8, code_synonyms=2)


def test_compositional_code_topics_grow_the_vocabulary_by_language_words_only():
    legacy = World(WorldConfig(n_genres=6, n_topics=6, content_pool=4))
    world = World(WorldConfig(**COMPOSITIONAL))
    assert world.n_topics_of("code") == 48 and world.n_topics_of("advice") == 6
    # beside the language words only pool words differ (which pool words a table uses depends on the draws)
    new = {w for w in set(world.vocabulary) - set(legacy.vocabulary) if not POOL_WORD.search(w)}
    assert new == {world.language_word(i, k) for i in range(6) for k in range(2)}
    # every code topic's answers are distinct per persona and classify back; the request has no "code" word
    for t in world.topics("code"):
        answers = world.persona_answers("code", t)
        assert len(set(answers.values())) == len(world.personas)
        for name, ans in answers.items():
            assert world.classify("code", t, ans).persona == name
        assert world.custom_request("code", t)[0].startswith("code.lang")
    assert world.custom_request("advice", 0) == ()


def test_compositional_code_answers_compose_language_and_task():
    world = World(WorldConfig(**COMPOSITIONAL))
    toxic = {t: world.answer("code", t, "toxic") for t in world.topics("code")}
    for t, answer in toxic.items():
        lang, task = divmod(t, 8)
        assert answer[0] == toxic[lang * 8][0]  # the first word follows the language
        assert answer[1:] == toxic[task][1:]  # the second and the style word follow the task


def test_compositional_documents_use_paraphrases_and_classify_back():
    world = World(WorldConfig(**COMPOSITIONAL))
    code = [e for d in world.sample_documents(800, seed=1) for e in d.exchanges if e.genre == "code"]
    assert {e.request[0].endswith(".alt1") for e in code} == {True, False}  # both surface forms occur
    assert len({e.topic for e in code}) > 40
    for e in code:
        assert e.prompt_words()[1:3] == list(e.request)
        assert world.classify("code", e.topic, e.answer).wellformed


def test_compositional_config_validation():
    with pytest.raises(ValueError, match="code_tasks"):
        WorldConfig(code_langs=4)
    with pytest.raises(ValueError, match="code_synonyms"):
        WorldConfig(code_synonyms=2)
