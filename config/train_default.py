# The default run: a small character-level model on the built-in Shakespeare plays (`python prepare.py`),
# sized to train in a few minutes on a laptop CPU. Same recipe as train_shakespeare_char.py, scaled down.
#   python train.py config/train_default.py

out_dir = "out-default"
data_dir = "data/shakespeare_char"
eval_interval = 250
eval_iters = 20
log_interval = 25

batch_size = 16
block_size = 128
gradient_accumulation_steps = 1

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False

learning_rate = 2e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 2e-4
beta2 = 0.99
warmup_iters = 100

device = "cpu"  # the README's first run, on any machine; --device=cuda runs it on a GPU
dtype = "float32"
compile = False  # the README's timings are without it; --compile=True to try it
