"""The tokenized-data cache: an unchanged recipe reuses it; a changed data byte, tokenizer, template or
length policy gets a new entry; a damaged entry is rebuilt, never trusted."""

from __future__ import annotations

import json

import pytest

from finetune.data.cache import cache_key
from finetune.data.preprocess import prepare_for
from finetune.recipe.schema import Recipe


@pytest.fixture
def recipe_for(tmp_path, tokenizer_dirs):
    rows = [{"prompt": f"Is {n} even?", "response": "yes" if n % 2 == 0 else "no"} for n in range(40)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def make(**data_keys) -> Recipe:
        return Recipe(
            model={"base": str(tokenizer_dirs["v1"]), "tokenizer": str(tokenizer_dirs["v1"])},
            data={"sources": [{"path": str(data), "format": "instruct-v3"}], "max_length": 64, **data_keys},
            output={"dir": str(tmp_path / "runs"), "name": "cache-test"},
        )

    make.data_file = data
    return make


def test_an_unchanged_recipe_reuses_the_prepared_data(recipe_for, tok_v1):
    first, folder, note = prepare_for(recipe_for(), tok_v1)
    assert note.startswith("cache: written")
    again, folder_again, note_again = prepare_for(recipe_for(), tok_v1)
    assert note_again.startswith("cache: reused") and folder_again == folder
    assert again.train["input_ids"] == first.train["input_ids"]
    assert again.train["completion_mask"] == first.train["completion_mask"]
    assert again.report.summary() == first.report.summary()


def test_each_ingredient_changes_the_key(recipe_for, tok_v1, tok_v3):
    base = cache_key(recipe_for(), tok_v1)
    assert cache_key(recipe_for(), tok_v1) == base
    assert cache_key(recipe_for(), tok_v3) != base  # another tokenizer
    assert cache_key(recipe_for(template="chat_template"), tok_v1) != base
    assert cache_key(recipe_for(max_length=65), tok_v1) != base
    assert cache_key(recipe_for(overlong="truncate"), tok_v1) != base
    path = recipe_for.data_file
    content = path.read_bytes()
    path.write_bytes(content.replace(b"Is 7 even", b"Is 7 eveN"))  # one byte of one row
    assert cache_key(recipe_for(), tok_v1) != base
    path.write_bytes(content)
    assert cache_key(recipe_for(), tok_v1) == base


def test_a_changed_special_token_changes_the_key(recipe_for, tok_v1, fresh_tokenizer):
    changed = fresh_tokenizer("v1")
    changed.pad_token = changed.unk_token
    assert cache_key(recipe_for(), changed) != cache_key(recipe_for(), tok_v1)


def test_a_damaged_entry_is_rebuilt(recipe_for, tok_v1):
    _, folder, _ = prepare_for(recipe_for(), tok_v1)
    (folder / "prepared.pkl").write_bytes(b"\x80\x05 not a pickle")
    data, _, note = prepare_for(recipe_for(), tok_v1)
    assert "unreadable" in note and "rebuilt" in note
    assert len(data.train) + len(data.eval) == 40
    assert prepare_for(recipe_for(), tok_v1)[2].startswith("cache: reused")


def test_a_hub_source_is_never_cached(tok_v1, tmp_path):
    recipe = Recipe(model={"base": "x"}, data={"sources": [{"path": "someone/some-data", "format": "alpaca"}]},
                    output={"dir": str(tmp_path)})
    assert cache_key(recipe, tok_v1) is None


def test_a_tokenizer_without_its_sentencepiece_model_is_cached_too(recipe_for, tokenizer_dirs, tmp_path):
    """Prompt segments then go through the HF tokenizer (an encoder that must pickle with the data)."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_dirs["v1"], folder)
    (folder / "tokenizer.model").unlink()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert prepare_for(recipe_for(), tokenizer)[2].startswith("cache: written")
    data, _, note = prepare_for(recipe_for(), tokenizer)
    assert note.startswith("cache: reused") and data.template.encode_prompt([{"role": "user", "content": "Hi"}])
    assert not list(tmp_path.glob("runs/.data-cache/*/*.tmp"))
