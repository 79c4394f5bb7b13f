# A small character-level Shakespeare model, nanoGPT's train_shakespeare_char: 6 layers, 6 heads, 384 wide.
# Data: python prepare.py --input=tinyshakespeare (downloads it), or from a local copy:
#       python prepare.py --input=path/to/input.txt --tokenizer=char --out_dir=data/tinyshakespeare_char
# (tinyshakespeare is a single document, so prepare.py splits it 90/10 by characters, exactly as nanoGPT does.)

out_dir = "out-shakespeare-char"
data_dir = "data/tinyshakespeare_char"
eval_interval = 250  # it overfits quickly: evaluate often and keep the best checkpoint
eval_iters = 200
log_interval = 10

batch_size = 64
block_size = 256  # characters of context
gradient_accumulation_steps = 1

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
bias = False

learning_rate = 1e-3  # small models can take a larger step
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99  # a bit larger than usual because there are few tokens per step
warmup_iters = 100
