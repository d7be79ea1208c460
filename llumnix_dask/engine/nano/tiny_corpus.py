"""A small built-in English text that the tiny model's byte-level BPE tokenizer is trained on.

Written for this project so that `make-tiny-model` needs no download. Its only job is to give the
tokenizer a few hundred sensible merges (common words, spaces, punctuation, digits).
"""

TINY_CORPUS = """\
A serving system receives requests from many users at once. Each request carries a prompt, and the
model answers it one token at a time. The first token comes after the prompt has been read, which we
call the prefill; every later token comes from a decode step. A decode step reads all the weights of
the model once, so it is cheap to run many requests together in the same batch.

The memory that holds the keys and values of the attention layers grows with every token. We split it
into blocks of sixteen tokens, and a table tells us which blocks belong to which request. When the
blocks run out, the youngest request gives its blocks back and waits in the queue; later it reads its
prompt and its answer again and carries on from where it stopped.

Llumnix moves a running request from one instance to another while it keeps decoding. First it copies
the blocks that are already full; then it copies the few blocks that were written during the copy; at
the end it pauses the request for a moment, copies the last block, and the new instance goes on. The
user sees no gap in the stream of tokens, and the answer is the same as if nothing had moved.

Why move requests at all? Because load changes all the time. Some instances fill up and must preempt
their requests, while others stand almost idle. Moving a long request away frees memory where it is
short, keeps high priority requests on quiet instances, and lets the cluster drain an instance before
it is removed. A good scheduler looks at the free memory of every instance, divided by the number of
requests it holds, and sends new work to the freest one.

The weather was cold in the morning and warm in the afternoon. She opened the window, made a cup of
tea, and read the news. There were stories about trains, rivers, mountains, music and the sea. He wrote
a letter to his friend, who lived in a small town near the coast, and asked about the garden, the
children, the dog and the old bicycle in the shed. They walked along the beach until the sun went down.

Numbers: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 2048 4096. Time: 12:30, 08:15, 23:59.
Punctuation: commas, full stops. Questions? Answers! Quotes "like this" and 'like that'; (brackets),
[lists], {sets}, a - b, a + b = c, x * y / z, 50% of 200 is 100, email@example.org, path/to/file.txt.

def forward(self, tokens, positions):
    hidden = self.embed(tokens)
    for layer in self.layers:
        hidden = layer(hidden, positions)
    return self.head(self.norm(hidden))

The quick brown fox jumps over the lazy dog. A large language model is a neural network that predicts
the next word of a text. It is trained on a great deal of text, and then it can write stories, answer
questions, translate between languages, and help people to write programs. Small models are fast and
cheap; large models know more and write better. In this project a tiny model with random weights is
enough: it is a real transformer, so the engine does the same work as with a large one, only faster.
"""
