"""Word-level LSTM language model (Zaremba et al. 2014), the model of the paper's Penn Treebank task."""

from __future__ import annotations

from torch import nn

from banray.catalog.models.registry import MODELS, Count, Dropout


class LSTMLanguageModel(nn.Module):
    """Embedding → dropout → LSTM → dropout → linear decoder over the vocabulary.

    `forward(tokens, state)` takes (time, batch) token ids and the previous hidden state and returns
    (time, batch, vocabulary) logits and the new state, so truncated BPTT can carry state across chunks.
    """

    def __init__(self, vocabulary: int, hidden: int, layers: int, dropout: float, tie_weights: bool):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.embedding = nn.Embedding(vocabulary, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, vocabulary)
        # Zaremba et al. initialise uniformly in a small range; 0.1 for the input and output embeddings.
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:  # Press & Wolf 2017: one matrix embeds and decodes (needs embedding size = hidden)
            self.decoder.weight = self.embedding.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens, state=None):
        output, state = self.lstm(self.drop(self.embedding(tokens)), state)
        return self.decoder(self.drop(output)), state


@MODELS.register("lstm_lm", revision=1)
def lstm_lm(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    hidden: Count = 1500,
    layers: Count = 1,
    dropout: Dropout = 0.65,
    tie_weights: bool = True,
) -> nn.Module:
    """The paper's PTB LSTM by default: one layer of 1500 units, 65% dropout, tied weights.

    `num_classes` is the vocabulary size; `input_shape` (the BPTT length) does not shape the model.
    """
    return LSTMLanguageModel(num_classes, hidden, layers, dropout, tie_weights)


lstm_lm.task = "language_model"
