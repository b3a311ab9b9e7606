"""Pure, batched image operations on float tensors shaped ``B x C x H x W`` with values in [0, 1].

Every function here is device-agnostic (it runs wherever its inputs live), holds no state and draws
no random numbers of its own: randomness comes in through an explicit ``torch.Generator``.
"""
