# A stand-in for the app.
print('hello', flush=True)
