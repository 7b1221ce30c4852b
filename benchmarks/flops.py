"""Model FLOPs of BERT training steps, counted layer by layer from the shapes the model computes.

Counting from the layers rather than from `6 * parameters * tokens` matters here: attention
grows with the padded length, and the masked-LM vocabulary projection runs only at the masked
positions, so a parameter count over- or under-states the work depending on the task.
A multiply-add counts as 2 FLOPs; embedding lookups, layer norms, softmax and the optimizer
update are left out (they are a few percent at these sizes). Backward costs twice the forward,
so a training step is three times the forward count.
"""

VOCABULARY_SIZE = 30522


def encoder_forward_flops(num_layers, hidden_dim, intermediate_dim, batch_size, sequence_length):
    """Forward FLOPs of the transformer encoder over (batch_size, sequence_length) positions.

    Per position and layer: query/key/value/output projections 4*2*H*H, feed-forward
    2*2*H*I, attention scores and context 2*2*S*H (every position attends to all S,
    padding included, since the model computes them).
    """
    return num_layers * _layer_forward_flops(
        hidden_dim, intermediate_dim, batch_size, sequence_length, sequence_length
    )


def _layer_forward_flops(hidden_dim, intermediate_dim, batch_size, sequence_length, num_queries):
    """One encoder layer whose `num_queries` queries attend to all `sequence_length` positions.

    Keys and values 2*2*H*H per position; per query: the query and output projections
    2*2*H*H, the feed-forward 2*2*H*I and the attention scores and context 2*2*S*H.
    """
    keys_and_values = sequence_length * 4 * hidden_dim * hidden_dim
    per_query = (
        4 * hidden_dim * hidden_dim
        + 4 * hidden_dim * intermediate_dim
        + 4 * sequence_length * hidden_dim
    )
    return batch_size * (keys_and_values + num_queries * per_query)


def masked_lm_training_flops(
    num_layers, hidden_dim, intermediate_dim, sequence_length, batch_size, num_predictions,
    vocabulary_size=VOCABULARY_SIZE, last_layer_at_predictions=False,
):
    """Training FLOPs of one masked-LM step.

    Per prediction: the transform 2*H*H and the vocabulary projection 2*H*V. The pooler is
    not trained by the masked-LM loss. These are the model's FLOPs, the basis of model FLOP
    utilisation. `last_layer_at_predictions=True` counts what kbert's `BertMaskedLM`
    executes instead: its last block computes keys and values at every position but
    everything else only at the `num_predictions` masked ones.
    """
    last_layer_queries = num_predictions if last_layer_at_predictions else sequence_length
    encoder = encoder_forward_flops(num_layers - 1, hidden_dim, intermediate_dim, batch_size, sequence_length)
    encoder += _layer_forward_flops(
        hidden_dim, intermediate_dim, batch_size, sequence_length, last_layer_queries
    )
    head = batch_size * num_predictions * (2 * hidden_dim * hidden_dim + 2 * hidden_dim * vocabulary_size)
    return 3 * (encoder + head)


def classifier_training_flops(
    num_layers, hidden_dim, intermediate_dim, sequence_length, batch_size, num_classes
):
    """Training FLOPs of one classification step on a (batch_size, sequence_length) batch.

    Per sequence: the pooler 2*H*H and the classification layer 2*H*C, on the first token.
    With length buckets, call it with each batch's padded length, not the longest allowed.
    """
    encoder = encoder_forward_flops(num_layers, hidden_dim, intermediate_dim, batch_size, sequence_length)
    head = batch_size * (2 * hidden_dim * hidden_dim + 2 * hidden_dim * num_classes)
    return 3 * (encoder + head)
