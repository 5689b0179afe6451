"""Encoders (3D/1D/2D ResNets, MLP, BiLSTM), projection head, regressor and the model wrapper."""
